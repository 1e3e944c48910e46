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
use std::time::Duration;

use serde::{Deserialize, Serialize};
pub use snapbpf_run::InvokeReport;

pub mod calibrate;
pub mod charts;
mod compat;
mod markdown;
mod progress;
pub mod report;
mod runner;
mod stamp;
pub mod stats;

pub use runner::run;
pub use stamp::utc_now;

pub use stats::Summary;

/// An engine's error, kept whole (its source chain is printed by the CLI).
pub type EngineError = Box<dyn std::error::Error + Send + Sync>;

/// What the harness needs from a restore engine. The harness itself knows no strategy,
/// runs no VM and links no BPF: `snapbpf bench` implements this over the snapbpf engine.
pub trait Engine {
    /// The strategy a spec (`NAME[:OPTION...]`) names, with its canonical spelling and
    /// label; refuses specs the engine does not know.
    fn strategy(&self, spec: &str) -> Result<StrategyEntry, EngineError>;
    /// A valid snapshot of `function` at `dir`, reusing one that is there.
    fn snapshot(&self, function: &str, dir: &Path) -> Result<SnapshotFacts, EngineError>;
    /// Runs `strategy`'s record phase on the snapshot at `dir`.
    fn record(
        &self,
        dir: &Path,
        strategy: &StrategyEntry,
        input: u32,
        timeout: Duration,
    ) -> Result<RecordFacts, EngineError>;
    /// The checksum `function` returns for `input` in a freshly booted VM (no snapshot):
    /// the reference every sample is checked against.
    fn reference(
        &self,
        function: &str,
        input: u32,
        timeout: Duration,
    ) -> Result<String, EngineError>;
    /// Restores and runs `concurrency` VMs of the snapshot at `dir` at once.
    fn invoke(&self, dir: &Path, cell: &Cell) -> Result<InvokeReport, EngineError>;
    /// How long the device takes to deliver the ranges `strategy` prefetches from the
    /// memory file of the snapshot at `dir`, `repeat` times cold (`None`: it prefetches
    /// nothing from the memory file).
    fn device_time(
        &self,
        dir: &Path,
        strategy: &StrategyEntry,
        repeat: u32,
    ) -> Option<Result<DeviceBound, EngineError>>;
    /// What the device VMs read their snapshots from delivers now, under the run's device
    /// profile (`None`: the engine cannot tell).
    fn device_speed(&self) -> Option<Result<calibrate::DeviceSpeed, EngineError>> {
        None
    }
}

/// One strategy of a run, as the engine describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StrategyEntry {
    /// Canonical spec, `NAME[:OPTION...]`: what the engine is asked to run.
    pub spec: String,
    /// Label in tables and charts (`snapbpf --thp`).
    pub label: String,
    /// The strategy's name (its variants share the record phase).
    pub name: String,
    /// Whether it has a record phase.
    pub record: bool,
}

/// One measured invocation's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    /// Strategy.
    pub strategy: StrategyEntry,
    /// VMs at once.
    pub concurrency: u32,
    /// Cold (the snapshot's files evicted first) or warm.
    pub cold: bool,
    /// Input number.
    pub input: u32,
    /// Longest one invocation may run.
    pub timeout: Duration,
}

/// Errors of a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Unknown function.
    #[error("cannot run function '{text}'")]
    UnknownFunction {
        /// The function as written.
        text: String,
        /// What is wrong with it.
        #[source]
        source: snapbpf_functions::CallError,
    },
    /// Bad option.
    #[error("{0}")]
    Config(String),
    /// A strategy spec was refused.
    #[error("strategy '{spec}'")]
    Strategy {
        /// The spec.
        spec: String,
        /// Cause.
        #[source]
        source: EngineError,
    },
    /// Taking a snapshot failed.
    #[error("snapshot of {function}")]
    Snapshot {
        /// Function.
        function: String,
        /// Cause.
        #[source]
        source: EngineError,
    },
    /// Recording failed.
    #[error("record {strategy} for {function}")]
    Record {
        /// Function.
        function: String,
        /// Strategy.
        strategy: String,
        /// Cause.
        #[source]
        source: EngineError,
    },
    /// Measuring the device time failed.
    #[error("{function}: device time of {strategy}'s prefetch")]
    Device {
        /// Function.
        function: String,
        /// Strategy.
        strategy: String,
        /// Cause.
        #[source]
        source: EngineError,
    },
    /// An invocation failed.
    #[error("{function} under {strategy} (concurrency {concurrency})")]
    Invoke {
        /// Function.
        function: String,
        /// Strategy.
        strategy: String,
        /// Concurrency.
        concurrency: u32,
        /// Cause.
        #[source]
        source: EngineError,
    },
    /// Computing a function's reference checksum failed.
    #[error("reference checksum of {function}")]
    Reference {
        /// Function.
        function: String,
        /// Cause.
        #[source]
        source: EngineError,
    },
    /// Samples returned a checksum other than the reference: their runs are void and
    /// listed under `wrong` in the results.
    #[error("{count} VM run(s) returned a wrong checksum (first: {first}); they were left out of every figure and are listed under \"wrong\" in {path}")]
    WrongAnswers {
        /// VM runs with a wrong checksum.
        count: usize,
        /// The first of them, described.
        first: String,
        /// The results file that lists them.
        path: PathBuf,
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
    #[serde(deserialize_with = "compat::entries")]
    pub strategies: Vec<StrategyEntry>,
    /// Strategies of the breakdown (Figure 4), measured with one VM; those also in
    /// `strategies` are measured once.
    #[serde(default, deserialize_with = "compat::entries")]
    pub breakdown: Vec<StrategyEntry>,
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
    /// Label of the strategy speedups are relative to (the paper's Linux-RA). Results
    /// written before it was recorded have it empty; the front-end fills it in.
    #[serde(default)]
    pub baseline: String,
    /// Label of the system under evaluation: memory is compared to it, and the device
    /// bound is measured with the ranges it prefetches (empty as `baseline`).
    #[serde(default)]
    pub subject: String,
    /// The storage class VMs read their snapshots from (`native` when not recorded).
    #[serde(default)]
    pub device: DeviceStamp,
    /// The strategies the fault costs are measured with (none in results written before
    /// calibration).
    #[serde(default)]
    pub probes: calibrate::ProbeStrategies,
    /// The VMM every VM of the run restores under (`builtin` in results written before
    /// Firecracker was measured), and its version where it has one.
    #[serde(default)]
    pub vmm: VmmStamp,
    /// Seed of the order cold samples run in: each round runs every cell of a function
    /// once, in an order shuffled from this seed, so the device's drift spreads over all
    /// strategies. `None` in results written before rounds were interleaved (strategy
    /// after strategy).
    #[serde(default)]
    pub seed: Option<u64>,
}

/// The VMM of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmStamp {
    /// `builtin` or `firecracker`.
    pub name: String,
    /// `firecracker --version`, for Firecracker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl Default for VmmStamp {
    fn default() -> Self {
        Self {
            name: "builtin".into(),
            version: None,
        }
    }
}

/// The device profile of a run and what the device delivered to our own direct reads,
/// with and without the profile's throttle.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceStamp {
    /// Profile name (`native`, `sata`); empty in results written before profiles.
    pub profile: String,
    /// Sequential 4 MiB direct reads through the profile, MB/s.
    pub seq_mb_s: Option<f64>,
    /// Random 4 KiB direct reads through the profile, per second.
    pub rand_4k_iops: Option<f64>,
    /// The same two without a throttle.
    pub native_seq_mb_s: Option<f64>,
    /// The same two without a throttle.
    pub native_rand_4k_iops: Option<f64>,
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
    /// The round of an interleaved run this cold sample belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<u32>,
    /// The cell measured just before this cold sample (`label x<concurrency>`), for the
    /// cost of a cold restore right after another strategy's run; `None` for a function's
    /// first sample and in results written before interleaving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
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
    /// Refuses a configuration that cannot run (unknown functions, no samples), before
    /// anything is measured or written.
    pub fn validate(&self) -> Result<(), BenchError> {
        for f in &self.functions {
            if let Err(source) = snapbpf_functions::Call::parse(f) {
                return Err(BenchError::UnknownFunction {
                    text: f.clone(),
                    source,
                });
            }
        }
        if self.repeat == 0 {
            return Err(BenchError::Config("--repeat must be at least 1".into()));
        }
        if self.concurrency.is_empty() || self.concurrency.contains(&0) {
            return Err(BenchError::Config(
                "--concurrency needs levels of at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Every strategy to measure with the concurrency levels it is measured at, in run
    /// order: the comparison strategies at every level, then the breakdown variants that
    /// are not among them with one VM.
    pub fn plan(&self) -> Vec<(StrategyEntry, Vec<u32>)> {
        let mut plan: Vec<(StrategyEntry, Vec<u32>)> = self
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
    /// CPU the capture itself cost (its BPF programs and its ring-buffer reader), ms,
    /// where the strategy measures it (SnapBPF).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_cpu_ms: Option<f64>,
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
    /// Every sample, warm-ups excluded, whose every VM returned the reference checksum.
    pub samples: Vec<Sample>,
    /// Reference checksums (fresh boots), per function, for the run's input.
    #[serde(default)]
    pub references: Vec<Reference>,
    /// VM runs, warm-ups included, that returned another checksum: never a data point.
    #[serde(default)]
    pub wrong: Vec<WrongAnswer>,
    /// The host's fault costs and the device around each function, measured in this run.
    #[serde(default)]
    pub calibration: calibrate::Calibration,
}

/// The checksum a function returns in a freshly booted VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reference {
    /// Function.
    pub function: String,
    /// Input.
    pub input: u32,
    /// Checksum, hex.
    pub checksum: String,
}

/// A VM run whose checksum differs from its function's reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrongAnswer {
    /// Function.
    pub function: String,
    /// Strategy label.
    pub strategy: String,
    /// VMs at once.
    pub concurrency: u32,
    /// Cold or warm.
    pub cold: bool,
    /// Which VM of the sample.
    pub vm: usize,
    /// What it returned.
    pub checksum: String,
    /// The reference.
    pub expected: String,
}

impl std::fmt::Display for WrongAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} under {} ({} VM(s), {}), VM {}: checksum {}, the fresh boot's is {}",
            self.function,
            self.strategy,
            self.concurrency,
            if self.cold { "cold" } else { "warm" },
            self.vm,
            self.checksum,
            self.expected
        )
    }
}

/// Raw results of the functions finished so far, rewritten after each function and
/// removed when the run completes.
pub const PARTIAL_RESULTS: &str = "results.partial.json";

/// Writes `results` as JSON to `path` atomically.
pub(crate) fn write_json(results: &BenchResults, path: &Path) -> Result<(), BenchError> {
    let io = |source| BenchError::Io {
        path: path.to_path_buf(),
        source,
    };
    let json = serde_json::to_vec_pretty(results).map_err(|e| io(e.into()))?;
    snapbpf_store::fsutil::write_atomic(path, &json).map_err(io)
}

/// Writes `results.json`, `summary.md` and the figures' charts (`fig*.svg`, `fig*.png`)
/// into the output directory; returns the summary. The raw results are written first, so
/// a failure drawing charts loses no measurement (`snapbpf bench --replot` redraws them).
pub fn write_results(results: &BenchResults) -> Result<String, BenchError> {
    let out = &results.config.out;
    std::fs::create_dir_all(out).map_err(|source| BenchError::Io {
        path: out.clone(),
        source,
    })?;
    write_json(results, &out.join("results.json"))?;
    redraw(results, out)
}

/// Writes the tables (`summary.md`) and the charts of `results` into `out`, and nothing
/// else: `--replot` never writes a `results.json`, so it cannot overwrite the run it
/// reads (or another one) with what it read.
pub fn redraw(results: &BenchResults, out: &Path) -> Result<String, BenchError> {
    let io = |path: PathBuf| move |source| BenchError::Io { path, source };
    std::fs::create_dir_all(out).map_err(io(out.to_path_buf()))?;
    let summary = report::markdown(results);
    let md_path = out.join("summary.md");
    snapbpf_store::fsutil::write_atomic(&md_path, summary.as_bytes()).map_err(io(md_path))?;
    charts::write_all(&report::figures(results), out)?;
    Ok(summary)
}

/// Largest `results.json` read back (a full run's is a few MiB).
pub const MAX_RESULTS_BYTES: u64 = 256 << 20;

/// Reads the raw results a run wrote (`results.json`): a regular file of at most
/// [`MAX_RESULTS_BYTES`].
pub fn read_results(path: &Path) -> Result<BenchResults, BenchError> {
    let bytes = snapbpf_store::fsutil::read_regular(path, MAX_RESULTS_BYTES)
        .map_err(|e| BenchError::Config(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        BenchError::Config(format!(
            "{} is not the results.json of a snapbpf bench run: {e}",
            path.display()
        ))
    })
}
