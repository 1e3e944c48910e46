//! `snapbpf invoke`: restore VMs from a snapshot under a strategy and run invocations.

use anyhow::Result;
use snapbpf::launch::{self, InvokeReport, InvokeRequest};
use snapbpf::run::RunOptions;
use snapbpf::strategy::{registry, StrategySpec};
use std::path::PathBuf;

/// Restore VMs from a snapshot and run one invocation in each.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Snapshot directory.
    dir: PathBuf,
    #[command(flatten)]
    strategy: StrategyArgs,
    /// Input number.
    #[arg(long, default_value_t = 0)]
    input: u32,
    /// Evict the snapshot from the page cache first (otherwise it is loaded fully: warm).
    #[arg(long)]
    cold: bool,
    /// Leave the page cache as it is (neither evict nor load): to compose with a prefetch
    /// run beside the VMM, e.g. `snapbpf prefetch` started at the same time.
    #[arg(long, conflicts_with = "cold")]
    as_is: bool,
    /// Number of VMs restored and run at once, one process each.
    #[arg(long, default_value_t = 1)]
    concurrency: u32,
    /// Longest an invocation may run, seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// The storage the VMs read the snapshot from: `native`, or `sata` (a blkio cgroup
    /// throttles reads of the snapshot's disk to 550 MB/s and 95k IOPS).
    #[arg(long, default_value = "native", value_parser = snapbpf::device::DeviceProfile::parse)]
    device: snapbpf::device::DeviceProfile,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Strategy selection shared by `invoke` and `record`.
#[derive(Debug, Clone, clap::Args)]
pub struct StrategyArgs {
    /// Restore strategy, `NAME[:OPTION[:OPTION=VALUE]...]` (`snapbpf strategies` lists
    /// them and their options) [default: the registry's baseline, linux-ra].
    #[arg(long, default_value_t = registry::baseline().to_arg(), hide_default_value = true)]
    pub strategy: String,
    /// Strategy option `no-prefetch`.
    #[arg(long)]
    pub no_prefetch: bool,
    /// Strategy option `no-pv`.
    #[arg(long)]
    pub no_pv: bool,
    /// Strategy option `no-premap`.
    #[arg(long)]
    pub no_premap: bool,
    /// Strategy option `thp`.
    #[arg(long)]
    pub thp: bool,
    /// Strategy option `uffd-handler=SOCKET`.
    #[arg(long, value_name = "SOCKET")]
    pub uffd_handler: Option<PathBuf>,
    /// Strategy option `store=SOCKET`: the in-memory snapshot store (`snapbpf store serve`).
    #[arg(long, value_name = "SOCKET")]
    pub store: Option<PathBuf>,
}

impl StrategyArgs {
    /// The spec: `--strategy` with the option flags added.
    pub fn spec(&self) -> Result<StrategySpec, snapbpf::strategy::SpecError> {
        let (name, mut options) = registry::split(&self.strategy);
        for (on, option) in [
            (self.no_prefetch, "no-prefetch"),
            (self.no_pv, "no-pv"),
            (self.no_premap, "no-premap"),
            (self.thp, "thp"),
        ] {
            if on {
                options.push((option.to_string(), None));
            }
        }
        for (option, socket) in [("uffd-handler", &self.uffd_handler), ("store", &self.store)] {
            if let Some(socket) = socket {
                options.push((
                    option.to_string(),
                    Some(socket.to_string_lossy().into_owned()),
                ));
            }
        }
        StrategySpec::with_options(name, &options)
    }
}

pub fn run(args: Args) -> Result<()> {
    let spec = args.strategy.spec()?;
    let req = InvokeRequest {
        dir: args.dir.clone(),
        spec: spec.clone(),
        run: RunOptions {
            input: args.input,
            timeout: super::secs(args.timeout_secs),
        },
        cache: match (args.cold, args.as_is) {
            (true, _) => launch::CacheStart::Cold,
            (false, true) => launch::CacheStart::AsIs,
            (false, false) => launch::CacheStart::Warm,
        },
        concurrency: args.concurrency,
        device: args.device,
    };
    let exe = super::current_exe()?;
    let report = launch::invoke(&req, &|| super::worker_command(&exe))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

fn print_report(r: &InvokeReport) {
    println!(
        "{} · {} · input {} · {} · {} VM(s)",
        r.function,
        r.strategy,
        r.input,
        if r.cold { "cold" } else { "warm" },
        r.concurrency
    );
    println!(
        "{:>4} {:>10} {:>11} {:>9} {:>10} {:>9} {:>12}  checksum",
        "vm", "e2e ms", "restore ms", "exec ms", "maj flt", "anon MiB", "file MiB"
    );
    for (i, run) in r.runs.iter().enumerate() {
        println!(
            "{:>4} {:>10.2} {:>11.2} {:>9.2} {:>10} {:>9.1} {:>12.1}  {}",
            i,
            run.e2e_ms,
            run.restore_ms,
            run.exec_ms,
            run.major_faults,
            run.rss_anon_kib as f64 / 1024.0,
            run.rss_file_kib as f64 / 1024.0,
            run.checksum
        );
    }
    println!(
        "memory: total {:.1} MiB = page cache {:.1} MiB + anonymous {:.1} MiB",
        r.memory.total_kib as f64 / 1024.0,
        r.memory.page_cache_kib as f64 / 1024.0,
        r.memory.anon_kib as f64 / 1024.0
    );
    if r.prefetch.bytes > 0 {
        println!(
            "prefetch: {:.1} MiB in {} ranges, {:.2} ms",
            r.prefetch.bytes as f64 / (1 << 20) as f64,
            r.prefetch.ranges,
            r.prefetch.ms
        );
    }
}
