//! `snapbpf bench`: the evaluation harness.

use std::path::PathBuf;

use anyhow::Result;
use snapbpf::strategy::{registry, StrategySpec};
use snapbpf_bench::{BenchConfig, StrategyEntry};

use crate::engine::{entry, SnapbpfEngine};

/// Run the evaluation: every figure of the SnapBPF paper in one run.
///
/// Snapshots the functions, records each strategy's artifacts (timed), and measures cold
/// and warm invocations: the comparison strategies at every concurrency level (Figures
/// 3a-3c), the breakdown variants with one VM (Figure 4). Writes raw samples
/// (results.json), tables (summary.md) and charts (fig3a/3b/3c/4 as .svg and .png) under
/// --out and prints the comparison.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Functions, comma-separated (default: all; with --quick: a small subset).
    #[arg(long, value_delimiter = ',')]
    functions: Vec<String>,
    /// Strategies compared at every concurrency level (Figures 3a-3c), comma-separated,
    /// each `NAME[:OPTION...]` (see `snapbpf strategies`) [default: every strategy as its
    /// paper describes it (snapbpf:4k for SnapBPF), plus linux-ra:thp and snapbpf as it
    /// runs by default].
    #[arg(long, value_delimiter = ',')]
    strategies: Vec<String>,
    /// Strategies of the breakdown (Figure 4), measured with one VM, as for --strategies;
    /// `none` skips the breakdown [default: linux-ra and snapbpf:4k with each breakdown
    /// option alone, then linux-ra:thp and the default snapbpf].
    #[arg(long, value_delimiter = ',')]
    breakdown: Vec<String>,
    /// Concurrency levels, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,10")]
    concurrency: Vec<u32>,
    /// Measured cold samples per cell.
    #[arg(long, default_value_t = 5)]
    repeat: u32,
    /// Unmeasured cold runs of each cell before a function's rounds of samples.
    #[arg(long, default_value_t = 1)]
    warmup: u32,
    /// Seed of the order each round runs a function's cells in (shuffled per round, so
    /// drift spreads over every strategy) [default: from the clock; the results record it].
    #[arg(long)]
    seed: Option<u64>,
    /// Input number of every invocation.
    #[arg(long, default_value_t = 0)]
    input: u32,
    /// Output directory [default: bench-out; with --replot: the results' directory].
    #[arg(long)]
    out: Option<PathBuf>,
    /// A few-minute subset: fewer functions, repeats and no warm-up.
    #[arg(long)]
    quick: bool,
    /// Longest one invocation may run, seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// The storage VMs read snapshots from, comma-separated: `native` (the host's device)
    /// and/or `sata` (reads throttled to a SATA SSD's 550 MB/s and 95k IOPS, the papers'
    /// class, by a blkio cgroup). Several: one run each, into --out/PROFILE.
    #[arg(long, value_delimiter = ',', default_value = "native", value_parser = snapbpf::storage_profile::StorageProfile::parse)]
    device: Vec<snapbpf::storage_profile::StorageProfile>,
    /// The VMMs VMs restore under, comma-separated: `builtin` (snapbpf's microVM) and/or
    /// `firecracker` (an unmodified Firecracker: --firecracker, $FIRECRACKER or PATH).
    /// Each runs the strategies it supports (the breakdown only under builtin: its
    /// variants are SnapBPF's PV filtering, which Firecracker cannot act on). Several: one
    /// run each, into --out/VMM.
    #[arg(long, value_delimiter = ',', default_value = "builtin", value_parser = snapbpf::snapshot::Vmm::parse)]
    vmm: Vec<snapbpf::snapshot::Vmm>,
    /// Take snapshots dense (every zero page written, as Firecracker writes a full
    /// snapshot, and as the paper measured; results before sparse snapshots were taken so)
    /// instead of sparse. Each function's `disk_bytes` in results.json says which.
    #[arg(long)]
    dense: bool,
    /// Measure nothing: redraw the tables and charts of an earlier run from its
    /// results.json into --out (default: the run's directory).
    #[arg(long, value_name = "RESULTS_JSON")]
    replot: Option<PathBuf>,
    /// Options given to every strategy of the plan that takes them (`--codec lz4`: Sabre
    /// records with LZ4; `--store SOCKET`: store strategies use that store instead of the
    /// bench's own).
    #[command(flatten)]
    options: super::strategy_args::OptionFlags,
}

/// Functions of the quick subset, where the suite has them.
const QUICK_FUNCTIONS: &[&str] = &["pyaes", "image", "graph_bfs"];

fn parse_all<'a>(list: impl IntoIterator<Item = &'a str>) -> Result<Vec<StrategyEntry>> {
    list.into_iter()
        .map(|s| Ok(entry(&StrategySpec::parse(s)?)))
        .collect()
}

pub fn run(args: Args) -> Result<()> {
    if let Some(path) = &args.replot {
        return replot(path, args.out.as_deref());
    }
    let (config, uses_store) = plan(&args)?;
    let exe = super::current_exe()?;
    let _store = if uses_store {
        let capacity: u64 = config
            .functions
            .iter()
            .filter_map(|f| snapbpf_functions::Call::parse(f).ok())
            .map(|f| u64::from(f.mem_mib()) << 20)
            .sum();
        Some(BenchStore::start(
            &exe,
            &store_socket(&config.out)?,
            capacity * 2,
        )?)
    } else {
        None
    };
    // Several VMMs or profiles: one full run each, into subdirectories named by them.
    for &vmm in &args.vmm {
        let mut config = for_vmm(&config, vmm)?;
        if args.vmm.len() > 1 {
            config.out = config.out.join(vmm.name());
        }
        for &device in &args.device {
            let mut config = config.clone();
            if args.device.len() > 1 {
                config.out = config.out.join(device.name());
            }
            let layout = if args.dense {
                snapbpf::snapshot::MemoryLayout::Dense
            } else {
                snapbpf::snapshot::MemoryLayout::Sparse
            };
            run_profile(config, device, vmm, layout, &exe)?;
        }
    }
    Ok(())
}

/// `config` for runs under `vmm`: the strategies that run there (the others are left out,
/// with a note), the breakdown and the fault calibration only under snapbpf's own VMM,
/// and the VMM stamped.
fn for_vmm(config: &BenchConfig, vmm: snapbpf::snapshot::Vmm) -> Result<BenchConfig> {
    let mut config = config.clone();
    let runs_there = |entry: &StrategyEntry| -> Result<bool> {
        let spec = StrategySpec::parse(&entry.spec)?;
        Ok(match snapbpf::strategy::check_vmm(&spec, vmm) {
            Ok(()) => true,
            Err(why) => {
                eprintln!(
                    "bench: {} left out under {}: {why}",
                    entry.label,
                    vmm.name()
                );
                false
            }
        })
    };
    let mut kept = Vec::new();
    for entry in config.strategies.drain(..) {
        if runs_there(&entry)? {
            kept.push(entry);
        }
    }
    config.strategies = kept;
    config.vmm = snapbpf_bench::VmmStamp {
        name: vmm.name().into(),
        version: None,
    };
    if vmm != snapbpf::snapshot::Vmm::Builtin {
        config.breakdown.clear();
        // The host's fault costs are measured with snapbpf's VMM (the runs under it).
        config.probes = snapbpf_bench::calibrate::ProbeStrategies::default();
        let bin = snapbpf::firecracker::binary()?;
        config.vmm.version = Some(bin.version().to_string());
    }
    if config.strategies.is_empty() {
        anyhow::bail!("no strategy of the plan runs under {}", vmm.name());
    }
    Ok(config)
}

/// `--replot`: the tables and charts of an earlier run, redrawn into `out` (default: the
/// run's directory); nothing measured.
fn replot(path: &std::path::Path, out: Option<&std::path::Path>) -> Result<()> {
    let mut results = snapbpf_bench::read_results(path)?;
    // Results from before the run recorded its baseline and subject compared to the
    // paper's, as every run did then.
    if results.config.baseline.is_empty() {
        results.config.baseline = registry::baseline().label();
    }
    if results.config.subject.is_empty() {
        results.config.subject = registry::subject().label();
    }
    let out = out.map(std::path::Path::to_path_buf).unwrap_or_else(|| {
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."))
            .to_path_buf()
    });
    snapbpf_bench::redraw(&results, &out)?;
    println!("{}", snapbpf_bench::report::console(&results));
    eprintln!("tables and charts redrawn in {}", out.display());
    Ok(())
}

/// The socket of the store the bench runs for its store strategies.
fn store_socket(out: &std::path::Path) -> Result<PathBuf> {
    Ok(std::path::absolute(out.join("store.sock"))?)
}

/// The run's configuration from the arguments, and whether a strategy of it restores
/// from the bench's own store.
fn plan(args: &Args) -> Result<(BenchConfig, bool)> {
    let functions = if !args.functions.is_empty() {
        args.functions.clone()
    } else if args.quick {
        QUICK_FUNCTIONS
            .iter()
            .filter(|f| snapbpf_functions::info(f).is_some())
            .map(|f| f.to_string())
            .collect()
    } else {
        snapbpf_functions::FUNCTIONS
            .iter()
            .filter(|f| f.workload)
            .map(|f| f.name.to_string())
            .collect()
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("bench-out"));
    // Strategies that restore from the in-memory store use one the bench runs itself.
    let socket = store_socket(&out)?;
    let mut uses_store = false;
    let mut with_store = |list: Vec<String>| -> Vec<String> {
        list.into_iter()
            .map(|text| {
                let text = args.options.apply_to(&text);
                let rewritten = bench_store_option(&text, &socket);
                uses_store |= rewritten != text;
                rewritten
            })
            .collect()
    };
    let defaults = |plan: &[&str]| plan.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let strategy_texts = if args.strategies.is_empty() {
        defaults(registry::DEFAULT_COMPARISON)
    } else {
        args.strategies.clone()
    };
    let strategies = parse_all(with_store(strategy_texts).iter().map(String::as_str))?;
    let breakdown = match args.breakdown.as_slice() {
        [] => parse_all(
            with_store(defaults(registry::DEFAULT_BREAKDOWN))
                .iter()
                .map(String::as_str),
        )?,
        [none] if none == "none" => Vec::new(),
        list => parse_all(with_store(list.to_vec()).iter().map(String::as_str))?,
    };
    let (repeat, warmup, warm_repeat) = if args.quick {
        (args.repeat.min(3), 0, 1)
    } else {
        (args.repeat, args.warmup, args.repeat.min(3))
    };
    let [read_fault_4k, anon_fault_4k, fault_2m] = registry::FAULT_PROBES.map(String::from);
    let config = BenchConfig {
        functions,
        strategies,
        breakdown,
        concurrency: args.concurrency.clone(),
        repeat,
        warmup,
        warm_repeat,
        input: args.input,
        out,
        timeout: super::secs(args.timeout_secs),
        baseline: registry::baseline().label(),
        subject: registry::subject().label(),
        device: snapbpf_bench::DeviceStamp::default(),
        probes: snapbpf_bench::calibrate::ProbeStrategies {
            read_fault_4k,
            anon_fault_4k,
            fault_2m,
        },
        vmm: snapbpf_bench::VmmStamp::default(),
        seed: Some(args.seed.unwrap_or_else(clock_seed)),
    };
    config.validate()?;
    Ok((config, uses_store))
}

/// A seed for a run that was given none: the clock's nanoseconds.
fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// One full run under one device profile: the device measured, the plan run, the
/// results written and the comparison printed.
fn run_profile(
    mut config: BenchConfig,
    device: snapbpf::storage_profile::StorageProfile,
    vmm: snapbpf::snapshot::Vmm,
    layout: snapbpf::snapshot::MemoryLayout,
    exe: &std::path::Path,
) -> Result<()> {
    let (stamp, probe) = measure_device(device, &config.out)?;
    config.device = stamp;
    eprintln!(
        "bench: {} function(s); {} strategies at concurrency {:?}, {} more for the breakdown; \
         {} warm-up(s) and {} interleaved round(s) per function (seed {}); VMM {}; device {}; into {}",
        config.functions.len(),
        config.strategies.len(),
        config.concurrency,
        config.plan().len() - config.strategies.len(),
        config.warmup,
        config.repeat,
        config.seed.unwrap_or(0),
        config
            .vmm
            .version
            .clone()
            .unwrap_or_else(|| vmm.name().into()),
        device.name(),
        config.out.display()
    );
    let engine = SnapbpfEngine {
        exe: exe.to_path_buf(),
        device,
        vmm,
        layout,
        probe: Some(probe.0.clone()),
    };
    let results = snapbpf_bench::run(&config, &engine, env!("SNAPBPF_GIT_REV"))?;
    snapbpf_bench::write_results(&results)?;
    println!("{}", snapbpf_bench::report::console(&results));
    eprintln!(
        "raw samples: {}; tables: {}; charts: {}/fig*.svg and .png",
        config.out.join("results.json").display(),
        config.out.join("summary.md").display(),
        config.out.display()
    );
    Ok(())
}

/// What the device under `out` delivers to direct reads of a 256 MiB probe file, with
/// and without `profile`'s throttle (refused where the profile cannot be applied, or the
/// device cannot deliver it now). The probe stays for the run's device checks; it is
/// removed when the guard drops.
fn measure_device(
    profile: snapbpf::storage_profile::StorageProfile,
    out: &std::path::Path,
) -> Result<(snapbpf_bench::DeviceStamp, RemoveOnDrop)> {
    use anyhow::Context;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let probe = RemoveOnDrop(std::path::absolute(out.join(".device-probe"))?);
    let block: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut file = std::fs::File::create(&probe.0).context("create the device probe")?;
    for _ in 0..256 {
        std::io::Write::write_all(&mut file, &block).context("write the device probe")?;
    }
    file.sync_all().context("sync the device probe")?;
    let native = snapbpf::storage_profile::measure(&probe.0).context("measure the device")?;
    if let Some((bps, _)) = profile.limits() {
        // The throttle caps the device; it cannot make a slow device fast. (Its IOPS cap
        // is for parallel reads and is not comparable with our one-at-a-time probe.)
        let want = bps as f64 / 1e6;
        if native.seq_mb_s < want {
            anyhow::bail!(
                "device profile {} needs {want:.0} MB/s, but the device under {} delivers {:.0} MB/s now (its throughput drifts on this machine kind): try again later, or run --device native",
                profile.name(),
                out.display(),
                native.seq_mb_s
            );
        }
    }
    let mut stamp = snapbpf_bench::DeviceStamp {
        profile: profile.name().into(),
        native_seq_mb_s: Some(native.seq_mb_s),
        native_rand_4k_iops: Some(native.rand_4k_iops),
        ..Default::default()
    };
    if let Some(speed) = crate::engine::measure_under(profile, &probe.0)? {
        stamp.seq_mb_s = Some(speed.seq_mb_s);
        stamp.rand_4k_iops = Some(speed.rand_4k_iops);
    } else {
        stamp.seq_mb_s = stamp.native_seq_mb_s;
        stamp.rand_4k_iops = stamp.native_rand_4k_iops;
    }
    eprintln!(
        "bench: device {}: {:.0} MB/s sequential, {:.0} random 4 KiB reads/s (unthrottled: {:.0} MB/s, {:.0}/s)",
        stamp.profile,
        stamp.seq_mb_s.unwrap_or(f64::NAN),
        stamp.rand_4k_iops.unwrap_or(f64::NAN),
        native.seq_mb_s,
        native.rand_4k_iops
    );
    Ok((stamp, probe))
}

/// Removes a file when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `text` with the bench's store socket as its store option (the option its registry row
/// gives that role), where the strategy requires one and none is given, or it is given
/// bare (`NAME:store`).
fn bench_store_option(text: &str, socket: &std::path::Path) -> String {
    use snapbpf::strategy::spec::OptionRole;
    let (name, options) = snapbpf::strategy::spec::split(text);
    let Some(option) = registry::info(name).and_then(|i| i.option_with(OptionRole::StoreSocket))
    else {
        return text.to_string();
    };
    let socket = socket.display().to_string();
    let mut given = false;
    let mut parts = vec![name.to_string()];
    for (o, value) in options {
        match value {
            None if o == option.name => {
                parts.push(format!("{o}={socket}"));
                given = true;
            }
            Some(v) => {
                given |= o == option.name;
                parts.push(format!("{o}={v}"));
            }
            None => parts.push(o),
        }
    }
    if !given && option.required {
        parts.push(format!("{}={socket}", option.name));
    }
    parts.join(":")
}

/// An in-memory snapshot store (`snapbpf store serve`) the bench runs for its store
/// strategies, stopped (SIGTERM) when dropped.
struct BenchStore(std::process::Child);

impl BenchStore {
    fn start(exe: &std::path::Path, socket: &std::path::Path, capacity: u64) -> Result<Self> {
        use anyhow::Context;
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let child = std::process::Command::new(exe)
            .args([
                "store",
                "serve",
                "--capacity",
                &capacity.to_string(),
                "--socket",
            ])
            .arg(socket)
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("cannot start the bench's snapshot store")?;
        let store = Self(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !socket.exists() {
            if std::time::Instant::now() > deadline {
                anyhow::bail!(
                    "the bench's snapshot store never listened on {}",
                    socket.display()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        eprintln!("bench: snapshot store on {}", socket.display());
        Ok(store)
    }
}

impl Drop for BenchStore {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the child this value started and has not reaped.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}
