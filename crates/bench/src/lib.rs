//! The evaluation harness behind `snapbpf bench`.
//!
//! For every function it takes (or reuses) a snapshot, records each strategy's artifacts,
//! and then measures, per strategy and concurrency, cold samples (the snapshot's files
//! evicted before every sample) after warm-up runs, plus warm samples (everything in the
//! page cache: the floor). Every sample is kept; summaries are medians with min and max.
//! Results are stamped with the git revision, kernel, CPU, disk and date.
//!
//! One run covers every figure of the paper's evaluation: the comparison strategies at
//! every concurrency level (Figures 3a–3c) and the breakdown variants alone (Figure 4),
//! plus each strategy's record cost and artifact sizes. [`write_results`] turns the raw
//! samples into tables ([`report`]) and charts ([`charts`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use snapbpf::launch::{self, InvokeReport, InvokeRequest};
use snapbpf::run::RunOptions;
use snapbpf::snapshot::{self, CreateOptions, Snapshot};
use snapbpf::strategy::StrategySpec;

pub mod charts;
mod compat;
pub mod profile;
mod progress;
pub mod report;
pub mod stats;

pub use stats::Summary;

/// Errors of a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Unknown function.
    #[error("unknown function '{0}' (see `snapbpf functions`)")]
    UnknownFunction(String),
    /// Bad option.
    #[error("{0}")]
    Config(String),
    /// Taking a snapshot failed.
    #[error("snapshot of {function}: {source}")]
    Snapshot {
        /// Function.
        function: String,
        /// Cause.
        source: snapshot::SnapshotError,
    },
    /// Recording failed.
    #[error("record {strategy} for {function}: {source}")]
    Record {
        /// Function.
        function: String,
        /// Strategy.
        strategy: String,
        /// Cause.
        source: snapbpf::strategy::StrategyError,
    },
    /// An invocation failed.
    #[error("{function} under {strategy} (concurrency {concurrency}): {source}")]
    Invoke {
        /// Function.
        function: String,
        /// Strategy.
        strategy: String,
        /// Concurrency.
        concurrency: u32,
        /// Cause.
        source: launch::InvokeError,
    },
    /// Drawing the charts failed (the raw results and tables are written).
    #[error("charts: {0}")]
    Charts(#[from] charts::ChartError),
    /// Writing results failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// What to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchConfig {
    /// Functions to measure.
    pub functions: Vec<String>,
    /// Strategies compared at every concurrency level (Figures 3a–3c).
    #[serde(deserialize_with = "compat::specs")]
    pub strategies: Vec<StrategySpec>,
    /// Strategies of the breakdown (Figure 4), measured with one VM; those also in
    /// `strategies` are measured once.
    #[serde(default, deserialize_with = "compat::specs")]
    pub breakdown: Vec<StrategySpec>,
    /// Concurrency levels.
    pub concurrency: Vec<u32>,
    /// Measured cold samples per (function, strategy, concurrency).
    pub repeat: u32,
    /// Unmeasured cold runs before the samples.
    pub warmup: u32,
    /// Measured warm samples per (function, strategy) at concurrency 1.
    pub warm_repeat: u32,
    /// Input of every invocation.
    pub input: u32,
    /// Output directory (snapshots, raw JSON, tables).
    pub out: PathBuf,
    /// Longest one invocation may run.
    pub timeout: Duration,
    /// Label of the strategy speedups are relative to (the paper's Linux-RA).
    #[serde(default = "default_baseline")]
    pub baseline: String,
    /// Label of the system under evaluation: memory is compared to it, and the device
    /// bound is measured with the ranges it prefetches.
    #[serde(default = "default_subject")]
    pub subject: String,
}

fn default_baseline() -> String {
    snapbpf::strategy::registry::baseline().label()
}

fn default_subject() -> String {
    snapbpf::strategy::registry::subject().label()
}

/// One measured invocation (all VMs of one run).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    /// Function.
    pub function: String,
    /// Strategy label.
    pub strategy: String,
    /// Concurrency.
    pub concurrency: u32,
    /// Cold or warm.
    pub cold: bool,
    /// The full invoke report.
    pub report: InvokeReport,
}

/// Where and when the results were measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stamp {
    /// Git revision of the code.
    pub git_rev: String,
    /// `uname -r`.
    pub kernel: String,
    /// CPU model.
    pub cpu: String,
    /// Cores online.
    pub cores: usize,
    /// Block device of the snapshots and its model, if known.
    pub disk: String,
    /// UTC date and time.
    pub date: String,
}

impl BenchConfig {
    /// Every strategy to measure with the concurrency levels it is measured at, in run
    /// order: the comparison strategies at every level, then the breakdown variants that
    /// are not among them with one VM.
    pub fn plan(&self) -> Vec<(StrategySpec, Vec<u32>)> {
        let mut plan: Vec<(StrategySpec, Vec<u32>)> = self
            .strategies
            .iter()
            .map(|s| (s.clone(), self.concurrency.clone()))
            .collect();
        for spec in &self.breakdown {
            match plan.iter_mut().find(|(s, _)| s == spec) {
                Some((_, levels)) if !levels.contains(&1) => levels.insert(0, 1),
                Some(_) => {}
                None => plan.push((spec.clone(), vec![1])),
            }
        }
        plan
    }
}

/// Per-snapshot facts reported beside the latencies.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotFacts {
    /// Function.
    pub function: String,
    /// Guest memory, bytes.
    pub mem_bytes: u64,
    /// Bytes the snapshot's memory file occupies on disk (it is sparse: never-touched
    /// guest memory takes no blocks).
    #[serde(default)]
    pub disk_bytes: u64,
    /// Time the init phase took, ms.
    pub init_ms: f64,
}

/// What one strategy's record phase cost and produced for one function.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordFacts {
    /// Function.
    pub function: String,
    /// Strategy name (every variant of a strategy shares its artifacts).
    pub strategy: String,
    /// Wall time of the record phase (a cold, recorded invocation), ms.
    pub ms: f64,
    /// Pages in the recorded working set.
    pub ws_pages: u64,
    /// Artifact files written, name and bytes.
    pub artifacts: Vec<(String, u64)>,
}

/// The other bound beside the warm floor: how long the device takes to deliver SnapBPF's
/// working set into the page cache, with no VM running (cold file, the prefetcher's
/// requests, until every page is resident).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceBound {
    /// Function.
    pub function: String,
    /// Bytes of the working set.
    pub bytes: u64,
    /// Contiguous ranges.
    pub ranges: u64,
    /// One time per repetition, ms.
    pub ms: Vec<f64>,
}

impl RecordFacts {
    /// Bytes of all artifact files.
    pub fn artifact_bytes(&self) -> u64 {
        self.artifacts.iter().map(|(_, b)| b).sum()
    }
}

/// Everything a benchmark run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchResults {
    /// Provenance.
    pub stamp: Stamp,
    /// The configuration.
    pub config: BenchConfig,
    /// Snapshots used.
    pub snapshots: Vec<SnapshotFacts>,
    /// Record phases, one per function and strategy that has one.
    #[serde(default)]
    pub records: Vec<RecordFacts>,
    /// Device time for SnapBPF's working set, per function (when snapbpf is measured).
    #[serde(default)]
    pub device_bounds: Vec<DeviceBound>,
    /// Every sample, warm-ups excluded.
    pub samples: Vec<Sample>,
}

/// Runs the benchmark. `worker` builds the command of one VM worker process (see
/// [`snapbpf::launch::invoke`]). `git_rev` stamps the results.
pub fn run(
    config: &BenchConfig,
    worker: &dyn Fn() -> Command,
    git_rev: &str,
) -> Result<BenchResults, BenchError> {
    for f in &config.functions {
        if snapbpf_functions::info(f).is_none() {
            return Err(BenchError::UnknownFunction(f.clone()));
        }
    }
    if config.repeat == 0 {
        return Err(BenchError::Config("--repeat must be at least 1".into()));
    }
    if config.concurrency.is_empty() || config.concurrency.contains(&0) {
        return Err(BenchError::Config(
            "--concurrency needs levels of at least 1".into(),
        ));
    }
    let plan = config.plan();
    if plan.is_empty() {
        return Err(BenchError::Config("no strategy to measure".into()));
    }
    let snap_dir = config.out.join("snapshots");
    std::fs::create_dir_all(&snap_dir).map_err(|source| BenchError::Io {
        path: snap_dir.clone(),
        source,
    })?;
    let invocations: u64 = plan
        .iter()
        .map(|(_, levels)| {
            levels.len() as u64 * u64::from(config.repeat + config.warmup)
                + u64::from(config.warm_repeat)
        })
        .sum();
    let progress = progress::Progress::new(config.functions.len() as u64 * invocations);
    let mut snapshots = Vec::new();
    let mut records = Vec::new();
    let mut device_bounds = Vec::new();
    let mut samples = Vec::new();
    for function in &config.functions {
        progress.stage(&format!("{function}: snapshot"));
        let snapshot = ensure_snapshot(function, &snap_dir.join(function))?;
        snapshots.push(SnapshotFacts {
            function: function.clone(),
            mem_bytes: snapshot.meta.mem_bytes,
            disk_bytes: allocated_bytes(&snapshot.memory_path()),
            init_ms: snapshot.meta.init_ms,
        });
        // Record every strategy once per function, in this run, so its cost is measured;
        // variants of one strategy share its artifacts.
        let mut recorded: Vec<&str> = Vec::new();
        for (spec, _) in &plan {
            if recorded.contains(&spec.name()) || !spec.info().record {
                continue;
            }
            recorded.push(spec.name());
            progress.stage(&format!("{function}: record {}", spec.name()));
            match spec.build().record(&snapshot, config.input, config.timeout) {
                Ok(report) => records.push(RecordFacts {
                    function: function.clone(),
                    strategy: spec.name().to_string(),
                    ms: report.ms,
                    ws_pages: report.pages,
                    artifacts: report
                        .artifacts
                        .iter()
                        .map(|(path, bytes)| {
                            let name = path.file_name().map_or_else(
                                || path.display().to_string(),
                                |n| n.to_string_lossy().into_owned(),
                            );
                            (name, *bytes)
                        })
                        .collect(),
                }),
                Err(source) => {
                    return Err(BenchError::Record {
                        function: function.clone(),
                        strategy: spec.name().to_string(),
                        source,
                    })
                }
            }
        }
        // The device bound: the ranges the system under evaluation prefetches.
        let prefetched = plan
            .iter()
            .filter(|(spec, _)| spec.label() == config.subject)
            .find_map(|(spec, _)| spec.build().prefetched_ranges(&snapshot));
        if let Some(ranges) = prefetched {
            progress.stage(&format!("{function}: device time for the working set"));
            let ranges =
                ranges.map_err(|e| BenchError::Config(format!("{function}: device bound: {e}")))?;
            device_bounds.push(device_bound(&snapshot, &ranges, config.repeat)?);
        }
        for (spec, levels) in &plan {
            let label = spec.label();
            let mut measure = |concurrency: u32, cold: bool, runs: u32, keep: bool| {
                for _ in 0..runs {
                    let req = InvokeRequest {
                        dir: snapshot.dir.clone(),
                        spec: spec.clone(),
                        run: RunOptions {
                            input: config.input,
                            timeout: config.timeout,
                        },
                        cold,
                        concurrency,
                    };
                    let report =
                        launch::invoke(&req, worker).map_err(|source| BenchError::Invoke {
                            function: function.clone(),
                            strategy: label.clone(),
                            concurrency,
                            source,
                        })?;
                    progress.inc();
                    if keep {
                        samples.push(Sample {
                            function: function.clone(),
                            strategy: label.clone(),
                            concurrency,
                            cold,
                            report,
                        });
                    }
                }
                Ok::<(), BenchError>(())
            };
            for &concurrency in levels {
                if config.warmup > 0 {
                    progress.stage(&format!("{function} · {label} · warm-up · x{concurrency}"));
                    measure(concurrency, true, config.warmup, false)?;
                }
                progress.stage(&format!("{function} · {label} · cold · x{concurrency}"));
                measure(concurrency, true, config.repeat, true)?;
            }
            if config.warm_repeat > 0 {
                progress.stage(&format!("{function} · {label} · warm · x1"));
                measure(1, false, config.warm_repeat, true)?;
            }
        }
        // A long run that is interrupted keeps what it measured so far.
        let so_far = BenchResults {
            stamp: stamp(git_rev, &snap_dir),
            config: config.clone(),
            snapshots: snapshots.clone(),
            records: records.clone(),
            device_bounds: device_bounds.clone(),
            samples: samples.clone(),
        };
        write_json(&so_far, &config.out.join(PARTIAL_RESULTS))?;
    }
    progress.finish();
    let results = BenchResults {
        stamp: stamp(git_rev, &snap_dir),
        config: config.clone(),
        snapshots,
        records,
        device_bounds,
        samples,
    };
    write_json(&results, &config.out.join("results.json"))?;
    let _ = std::fs::remove_file(config.out.join(PARTIAL_RESULTS));
    Ok(results)
}

/// Raw results of the functions finished so far, rewritten after each function and
/// removed when the run completes.
pub const PARTIAL_RESULTS: &str = "results.partial.json";

/// Writes `results` as JSON to `path` atomically.
fn write_json(results: &BenchResults, path: &Path) -> Result<(), BenchError> {
    let io = |source| BenchError::Io {
        path: path.to_path_buf(),
        source,
    };
    let json = serde_json::to_vec_pretty(results).map_err(|e| io(e.into()))?;
    snapbpf_store::fsutil::write_atomic(path, &json).map_err(io)
}

/// Times `repeat` cold reads of `ranges` of `snapshot`'s memory file with the prefetcher.
fn device_bound(
    snapshot: &Snapshot,
    ranges: &[snapbpf_wss::workingset::PageRange],
    repeat: u32,
) -> Result<DeviceBound, BenchError> {
    let function = snapshot.meta.function.clone();
    let fail = |what: String| BenchError::Config(format!("{function}: device bound: {what}"));
    let path = snapshot.memory_path();
    let file = std::fs::File::open(&path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
    let mut ms = Vec::new();
    let mut bytes = 0;
    for _ in 0..repeat {
        snapbpf_store::fsutil::evict(&path).map_err(|e| fail(e.to_string()))?;
        let done = snapbpf_wss::prefetch::prefetch_until_resident(&file, ranges, DEVICE_WAIT)
            .map_err(|e| fail(e.to_string()))?;
        if done.missing_pages > 0 {
            return Err(fail(format!(
                "{} pages were still not resident after {:?}",
                done.missing_pages, DEVICE_WAIT
            )));
        }
        bytes = done.stats.bytes;
        ms.push(done.resident_after.as_secs_f64() * 1e3);
    }
    Ok(DeviceBound {
        function: snapshot.meta.function.clone(),
        bytes,
        ranges: ranges.len() as u64,
        ms,
    })
}

/// Longest the device may take to deliver a working set.
const DEVICE_WAIT: Duration = Duration::from_secs(60);

/// Bytes of disk blocks allocated to `path` (0 when it cannot be read).
fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

/// Reuses a valid snapshot of this build at `dir`, or takes a new one.
pub(crate) fn ensure_snapshot(function: &str, dir: &Path) -> Result<Snapshot, BenchError> {
    if let Ok(s) = snapshot::open(dir) {
        if s.meta.function == function {
            return Ok(s);
        }
    }
    let err = |source| BenchError::Snapshot {
        function: function.into(),
        source,
    };
    snapshot::create(
        function,
        dir,
        &CreateOptions {
            force: true,
            ..CreateOptions::default()
        },
    )
    .map_err(err)
}

fn first_line(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
}

fn stamp(git_rev: &str, snapshots: &Path) -> Stamp {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let disk = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(snapshots)
            .ok()
            .map(|m| {
                let (maj, min) = (libc_major(m.dev()), libc_minor(m.dev()));
                let name = std::fs::read_link(format!("/sys/dev/block/{maj}:{min}"))
                    .ok()
                    .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .unwrap_or_else(|| format!("{maj}:{min}"));
                let model = first_line(&format!("/sys/block/{name}/device/model"))
                    .or_else(|| first_line(&format!("/sys/block/{name}/device/vendor")))
                    .unwrap_or_default();
                let rotational = first_line(&format!("/sys/block/{name}/queue/rotational"))
                    .map(|r| {
                        if r == "0" {
                            " (non-rotational)"
                        } else {
                            " (rotational)"
                        }
                    })
                    .unwrap_or("");
                format!("{name} {model}{rotational}").trim().to_string()
            })
            .unwrap_or_else(|| "unknown".into())
    };
    Stamp {
        git_rev: git_rev.into(),
        kernel: first_line("/proc/sys/kernel/osrelease").unwrap_or_else(|| "unknown".into()),
        cpu,
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        disk,
        date: utc_now(),
    }
}

fn libc_major(dev: u64) -> u64 {
    ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)
}

fn libc_minor(dev: u64) -> u64 {
    ((dev >> 12) & 0xffff_ff00) | (dev & 0xff)
}

/// Current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Writes `results.json`, `summary.md` and the figures' charts (`fig*.svg`, `fig*.png`)
/// into the output directory; returns the summary. The raw results are written first, so
/// a failure drawing charts loses no measurement (`snapbpf bench --replot` redraws them).
pub fn write_results(results: &BenchResults) -> Result<String, BenchError> {
    let out = &results.config.out;
    write_results_to(results, out)
}

/// [`write_results`] into `out` instead of the directory the run was configured with.
pub fn write_results_to(results: &BenchResults, out: &Path) -> Result<String, BenchError> {
    let io = |path: PathBuf| move |source| BenchError::Io { path, source };
    std::fs::create_dir_all(out).map_err(io(out.to_path_buf()))?;
    write_json(results, &out.join("results.json"))?;
    let summary = report::markdown(results);
    let md_path = out.join("summary.md");
    snapbpf_store::fsutil::write_atomic(&md_path, summary.as_bytes()).map_err(io(md_path))?;
    charts::write_all(&report::figures(results), out)?;
    Ok(summary)
}

/// Reads the raw results a run wrote (`results.json`).
pub fn read_results(path: &Path) -> Result<BenchResults, BenchError> {
    let bytes = std::fs::read(path)
        .map_err(|e| BenchError::Config(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        BenchError::Config(format!(
            "{} is not the results.json of a snapbpf bench run: {e}",
            path.display()
        ))
    })
}
