//! `snapbpf push` and `snapbpf mount`: snapshots through an S3-compatible object store
//! (`snapbpf_fleet`), and the mount `invoke` makes behind the scenes for an `s3://` URL.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use snapbpf_fleet::{Location, MountOptions, MountStats, PushOptions, RemoteOptions, SnapshotUrl};

/// Where the object store is, beyond the AWS environment (`AWS_ENDPOINT_URL`,
/// `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`).
#[derive(Debug, Clone, clap::Args)]
pub struct RemoteArgs {
    /// Endpoint URL of the S3-compatible store (default: `AWS_ENDPOINT_URL`, else AWS).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Region (default: `AWS_REGION` or `AWS_DEFAULT_REGION`).
    #[arg(long)]
    pub region: Option<String>,
    /// Allow a plain `http://` endpoint (also `AWS_ALLOW_HTTP=true`); refused otherwise:
    /// chunks are a tenant's memory.
    #[arg(long)]
    pub allow_http: bool,
}

impl RemoteArgs {
    fn options(&self) -> RemoteOptions {
        RemoteOptions {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            allow_http: self.allow_http,
            ..RemoteOptions::default()
        }
    }
}

/// Upload a snapshot as content-addressed chunks and a manifest.
#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// Snapshot directory.
    dir: PathBuf,
    /// Where: `s3://BUCKET/PREFIX/NAME`.
    url: String,
    /// Bytes per chunk (a power of two from 64K to 64M).
    #[arg(long, default_value = "512K", value_parser = super::store::parse_bytes)]
    chunk_size: u64,
    /// Requests in flight.
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    #[command(flatten)]
    remote: RemoteArgs,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Mount every snapshot pushed under a location as a read-only snapshot directory.
#[derive(Debug, clap::Args)]
pub struct MountArgs {
    /// What: `s3://BUCKET/PREFIX`.
    url: String,
    /// Where: an empty directory (made if missing).
    mountpoint: PathBuf,
    /// The host's chunk cache directory.
    #[arg(long)]
    cache: PathBuf,
    /// Most bytes the chunk cache holds.
    #[arg(long, default_value = "10G", value_parser = super::store::parse_bytes)]
    cache_bytes: u64,
    /// Most GETs in flight.
    #[arg(long, default_value_t = 32)]
    parallel: usize,
    /// Write the mount's counters here as JSON when it stops.
    #[arg(long)]
    stats: Option<PathBuf>,
    /// Let processes of this group id read the snapshots too (files 0440, directories
    /// 0550, modes checked by the kernel); by default only the mounting user can.
    #[arg(long, value_name = "GID")]
    group: Option<u32>,
    #[command(flatten)]
    remote: RemoteArgs,
}

pub fn push(args: PushArgs) -> Result<()> {
    let url = SnapshotUrl::parse(&args.url)?;
    let options = PushOptions {
        chunk_size: args.chunk_size,
        parallel: args.parallel,
        remote: args.remote.options(),
    };
    let quiet = args.json;
    let report = snapbpf_fleet::push(&args.dir, &url, &options, &|line| {
        if !quiet {
            eprintln!("{line}");
        }
    })?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "pushed {} to {}: {} files, {} chunks ({} zero, {} distinct), {} already stored, {} uploaded ({:.1} MiB, {:.1} MiB raw), manifest {}, {:.0} ms",
            args.dir.display(),
            report.url,
            report.files,
            report.chunks,
            report.zero_chunks,
            report.unique_chunks,
            report.present,
            report.uploaded,
            report.uploaded_bytes as f64 / (1 << 20) as f64,
            report.uploaded_raw_bytes as f64 / (1 << 20) as f64,
            if report.manifest_written { "written" } else { "unchanged" },
            report.ms
        );
    }
    Ok(())
}

fn mount_options(
    cache: &Path,
    cache_bytes: u64,
    parallel: usize,
    remote: &RemoteArgs,
    group: Option<u32>,
) -> MountOptions {
    MountOptions {
        cache_bytes,
        parallel_gets: parallel,
        remote: remote.options(),
        group,
        ..MountOptions::new(cache.to_path_buf())
    }
}

pub fn mount(args: MountArgs) -> Result<()> {
    let location = Location::parse(&args.url)?;
    std::fs::create_dir_all(&args.mountpoint)
        .with_context(|| format!("cannot create the mountpoint {}", args.mountpoint.display()))?;
    let finish = snapbpf_os::interrupt::finish_on_signal();
    let session = snapbpf_fleet::mount(
        &location,
        &args.mountpoint,
        &mount_options(
            &args.cache,
            args.cache_bytes,
            args.parallel,
            &args.remote,
            args.group,
        ),
    )?;
    let mountpoint = args.mountpoint.clone();
    let _unmount =
        snapbpf_os::interrupt::on_interrupt("the mount", move || lazy_unmount(&mountpoint));
    eprintln!(
        "mount: {} snapshots of {location} at {} (chunk cache {}); SIGINT or SIGTERM to unmount",
        session.stats().snapshots,
        args.mountpoint.display(),
        args.cache.display()
    );
    while finish.requested().is_none() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let stats = session.stats();
    session
        .unmount()
        .with_context(|| format!("cannot unmount {}", args.mountpoint.display()))?;
    let f = &stats.fetch;
    eprintln!(
        "mount: unmounted: {} GETs ({:.1} MiB), {} chunk-cache hits, {} failed reads",
        f.requests,
        f.bytes as f64 / (1 << 20) as f64,
        f.cache_hits,
        stats.failed_reads
    );
    if let Some(path) = &args.stats {
        snapbpf_store::fsutil::write_atomic(path, &serde_json::to_vec_pretty(&stats)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Detaches the mount at `path` (what an interrupted run leaves behind otherwise).
fn lazy_unmount(path: &Path) {
    if let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) {
        // SAFETY: umount2 with a NUL-terminated path we own and a flag.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// A snapshot of an `s3://` URL mounted for one `invoke`.
pub struct AutoMount {
    session: Option<snapbpf_fleet::MountSession>,
    mountpoint: PathBuf,
    _unmount: snapbpf_os::interrupt::Guard,
    /// The snapshot directory on the mount.
    pub dir: PathBuf,
}

impl AutoMount {
    /// Mounts the location of `url` in a private directory (created 0700 under a name
    /// nobody can guess), with the chunk cache `cache`.
    pub fn new(url: &SnapshotUrl, cache: &Path, remote: &RemoteArgs) -> Result<Self> {
        let mountpoint = snapbpf_store::fsutil::private_dir(
            &std::env::temp_dir(),
            &format!("snapbpf-mount-{}", url.name),
        )
        .with_context(|| {
            format!(
                "cannot create a mountpoint in {}",
                std::env::temp_dir().display()
            )
        })?;
        let session = snapbpf_fleet::mount(
            &url.location,
            &mountpoint,
            &mount_options(cache, 10 << 30, 32, remote, None),
        )?;
        let target = mountpoint.clone();
        let guard = snapbpf_os::interrupt::on_interrupt("the snapshot mount", move || {
            lazy_unmount(&target);
            let _ = std::fs::remove_dir(&target);
        });
        let dir = mountpoint.join(&url.name);
        if !dir.is_dir() {
            anyhow::bail!(
                "no snapshot '{}' has been pushed to {}",
                url.name,
                url.location
            );
        }
        Ok(Self {
            session: Some(session),
            mountpoint,
            _unmount: guard,
            dir,
        })
    }
}

impl Drop for AutoMount {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            if let Err(e) = s.unmount() {
                tracing::warn!("cannot unmount {}: {e}", self.mountpoint.display());
            }
        }
        let _ = std::fs::remove_dir(&self.mountpoint);
    }
}

/// What a run fetched: the difference of the mount's counters around it.
pub fn fetched(before: &MountStats, after: &MountStats) -> serde_json::Value {
    let (b, a) = (&before.fetch, &after.fetch);
    let requests = a.requests.saturating_sub(b.requests);
    serde_json::json!({
        "requests": requests,
        "bytes": a.bytes.saturating_sub(b.bytes),
        "raw_bytes": a.raw_bytes.saturating_sub(b.raw_bytes),
        "cache_hits": a.cache_hits.saturating_sub(b.cache_hits),
        "memory_hits": a.memory_hits.saturating_sub(b.memory_hits),
        "joined": a.joined.saturating_sub(b.joined),
        "errors": a.errors.saturating_sub(b.errors),
        "ttfb_ms": if requests == 0 { 0.0 } else {
            a.ttfb_ns.saturating_sub(b.ttfb_ns) as f64 / requests as f64 / 1e6
        },
        "failed_reads": after.failed_reads.saturating_sub(before.failed_reads),
    })
}
