//! Per-function memory profile: the measured table of `docs/functions.md`.

use std::fmt::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use snapbpf_wss::workingset::WorkingSet;

use crate::launch::{self, InvokeRequest};
use crate::run::RunOptions;
use crate::strategy::{registry, StrategySpec};

use crate::launch::InvokeError;
use crate::snapshot::SnapshotError;
use crate::strategy::StrategyError;

/// Errors profiling a function.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The snapshot could not be taken.
    #[error("{function}: snapshot")]
    Snapshot {
        /// Function.
        function: String,
        /// Cause.
        #[source]
        source: SnapshotError,
    },
    /// An invocation failed.
    #[error("{function} under {strategy}")]
    Invoke {
        /// Function.
        function: String,
        /// Strategy label.
        strategy: String,
        /// Cause.
        #[source]
        source: InvokeError,
    },
    /// Recording the working set failed.
    #[error("{function}: record")]
    Record {
        /// Function.
        function: String,
        /// Cause.
        #[source]
        source: StrategyError,
    },
    /// The registry's profile plan does not parse.
    #[error("the registry's profile plan")]
    Plan(#[from] crate::strategy::SpecError),
    /// The recorded working set cannot be read.
    #[error("{function}: working set")]
    WorkingSet {
        /// Function.
        function: String,
        /// Cause.
        #[source]
        source: snapbpf_wss::workingset::ReadError,
    },
}

/// Measured memory behaviour of one function and input.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionProfile {
    /// Function.
    pub function: String,
    /// Input.
    pub input: u32,
    /// Guest memory = snapshot memory file, bytes.
    pub snapshot_bytes: u64,
    /// Init phase in a fresh VM, ms.
    pub init_ms: f64,
    /// Snapshot pages a cold `linux-nora` invocation reads (exact: no readahead), bytes.
    pub read_bytes: u64,
    /// Private pages the invocation creates (writes), bytes, without filtering.
    pub written_bytes: u64,
    /// Bytes of fresh allocations served without snapshot I/O by PV filtering.
    pub fresh_bytes: u64,
    /// VM exits PV filtering took.
    pub hint_exits: u64,
    /// Pages in the snapbpf working set recorded for this input, bytes.
    pub working_set_bytes: u64,
    /// Size of the working-set metadata file, bytes.
    pub working_set_file_bytes: u64,
    /// Invocation time with everything resident in the guest (later invocations in one
    /// freshly booted VM), ms.
    pub warm_exec_ms: f64,
    /// Checksum (same in every run).
    pub checksum: String,
}

/// Profiles `functions` with `input`, keeping snapshots under `out/snapshots`.
pub fn profile(
    functions: &[String],
    input: u32,
    out: &Path,
    worker: &dyn Fn() -> Command,
    timeout: Duration,
    progress: &dyn Fn(&str),
) -> Result<Vec<FunctionProfile>, ProfileError> {
    let mut profiles = Vec::new();
    for function in functions {
        progress(&format!("{function}: snapshot"));
        let snapshot = crate::snapshot::ensure(function, &out.join("snapshots").join(function))
            .map_err(|source| ProfileError::Snapshot {
                function: function.clone(),
                source,
            })?;
        let invoke_err = |strategy: &str| {
            let (function, strategy) = (function.clone(), strategy.to_string());
            move |source| ProfileError::Invoke {
                function,
                strategy,
                source,
            }
        };
        let run = |spec: StrategySpec| {
            let req = InvokeRequest {
                dir: snapshot.dir.clone(),
                spec,
                run: RunOptions { input, timeout },
                cache: crate::launch::CacheStart::Cold,
                device: crate::storage_profile::StorageProfile::Native,
                concurrency: 1,
            };
            launch::invoke(&req, worker)
        };
        progress(&format!("{function}: cold linux-nora"));
        // What the function reads: demand paging with nothing read ahead.
        // What it allocates fresh: SnapBPF's filtering alone. Its working set: the capture.
        let [demand, filtering, capture] = registry::PROFILE_PROBES.map(StrategySpec::parse);
        let (demand, filtering, capture) = (demand?, filtering?, capture?);
        progress(&format!("{function}: cold {}", demand.label()));
        let nora = run(demand.clone()).map_err(invoke_err(&demand.label()))?;
        progress(&format!("{function}: cold PV filtering"));
        let pv = run(filtering.clone()).map_err(invoke_err(&filtering.label()))?;
        progress(&format!("{function}: record"));
        let ws_file = capture
            .info()
            .artifacts
            .first()
            .copied()
            .unwrap_or_default();
        let ws_path = snapshot.artifact_path(ws_file);
        let _ = std::fs::remove_file(&ws_path);
        crate::strategy::record(&capture, &snapshot, input, timeout).map_err(|source| {
            ProfileError::Record {
                function: function.clone(),
                source,
            }
        })?;
        let ws = WorkingSet::read(&ws_path).map_err(|source| ProfileError::WorkingSet {
            function: function.clone(),
            source,
        })?;
        progress(&format!("{function}: warm exec"));
        let boot =
            crate::snapshot::fresh_boot(function, input, 4, None, timeout).map_err(|source| {
                ProfileError::Snapshot {
                    function: function.clone(),
                    source,
                }
            })?;
        let warm: Vec<f64> = boot.invocations.iter().skip(1).map(|i| i.1).collect();
        let (n, p) = (&nora.runs[0], &pv.runs[0]);
        profiles.push(FunctionProfile {
            function: function.clone(),
            input,
            snapshot_bytes: snapshot.meta.mem_bytes,
            init_ms: boot.init_ms,
            read_bytes: nora.memory.page_cache_kib << 10,
            written_bytes: n.written_kib << 10,
            fresh_bytes: p.fresh_bytes,
            hint_exits: p.hint_exits,
            working_set_bytes: ws.total_bytes(),
            working_set_file_bytes: std::fs::metadata(&ws_path).map(|m| m.len()).unwrap_or(0),
            warm_exec_ms: median(&warm),
            checksum: n.checksum.clone(),
        });
    }
    Ok(profiles)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The profile as a Markdown table.
pub fn markdown(profiles: &[FunctionProfile]) -> String {
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| function | input | snapshot MiB | init ms | read MiB | written MiB | fresh MiB (PV) | hint exits | working set MiB | WS metadata bytes | warm exec ms |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
    for p in profiles {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {:.1} | {} | {:.1} |",
            p.function,
            p.input,
            mib(p.snapshot_bytes),
            p.init_ms,
            mib(p.read_bytes),
            mib(p.written_bytes),
            mib(p.fresh_bytes),
            p.hint_exits,
            mib(p.working_set_bytes),
            p.working_set_file_bytes,
            p.warm_exec_ms
        );
    }
    md
}
