//! Host calibration: the costs that decide every comparison of a run, measured in it.
//!
//! The cost of a guest page fault differs by 5x between hosts of one machine kind, and the
//! virtio disk's throughput drifts by tens of times, so a conclusion drawn without them
//! does not transfer. Every run therefore measures, with the engine's own VMM:
//!
//! - **Fault costs**: the `faultprobe` function touches one word per 4 KiB page of 64 MiB,
//!   restored three ways that each fault one way only (a 4 KiB read fault on a page-cache
//!   mapping, a 4 KiB anonymous write fault, a 2 MiB page-cache fault); its execution time
//!   over the faults taken is the cost of one.
//! - **The device** before and after every function, under the run's device profile: a
//!   function measured while the device drifted by more than [`DRIFT_LIMIT`] is flagged.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{BenchError, Cell, Engine};

/// The calibration function (see `snapbpf_functions::faultprobe`).
pub const PROBE_FUNCTION: &str = "faultprobe";

/// A change of the device's speed between before and after a function, relative, above
/// which its cells are flagged.
pub const DRIFT_LIMIT: f64 = 0.2;

/// Warm samples per fault kind (after one cold run that loads the page cache the way the
/// kind needs it).
const FAULT_SAMPLES: usize = 3;

/// The strategy specs that fault one way each, as the engine spells them (the engine's
/// registry names them; this crate names no strategy).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeStrategies {
    /// 4 KiB read faults on a page-cache mapping, page cache warm (input 0).
    pub read_fault_4k: String,
    /// 4 KiB anonymous write faults (input 1).
    pub anon_fault_4k: String,
    /// 2 MiB faults on huge page-cache folios, page cache warm (input 0).
    pub fault_2m: String,
}

/// What a run measured of its host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// A 4 KiB read fault on a page-cache mapping: `linux-nora`, page cache warm, input 0.
    pub read_fault_4k: Option<FaultCost>,
    /// A 4 KiB anonymous write fault: PV-filtered fresh memory, input 1.
    pub anon_fault_4k: Option<FaultCost>,
    /// A 2 MiB fault on huge page-cache folios: `linux-ra:thp`, page cache warm, input 0.
    pub fault_2m: Option<FaultCost>,
    /// The device before and after each function.
    #[serde(default)]
    pub device: Vec<DeviceCheck>,
}

/// The measured cost of one kind of fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultCost {
    /// The strategy spec that faults this way.
    pub strategy: String,
    /// faultprobe's input.
    pub input: u32,
    /// Faults one invocation takes.
    pub faults: u64,
    /// The raw samples: execution time of each invocation, ms.
    pub exec_ms: Vec<f64>,
    /// Median execution time over the faults, µs per fault.
    pub us: f64,
}

/// What the device delivered to direct reads under the run's profile.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceSpeed {
    /// Sequential reads, MB/s.
    pub seq_mb_s: f64,
    /// Random 4 KiB reads per second.
    pub rand_4k_iops: f64,
}

/// The device measured around one function's cells.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceCheck {
    /// Function.
    pub function: String,
    /// Before its snapshot and records.
    pub before: DeviceSpeed,
    /// After its last sample.
    pub after: DeviceSpeed,
    /// The larger relative change of the two speeds.
    pub drift: f64,
    /// `drift` above [`DRIFT_LIMIT`]: the function's cells were measured on a device
    /// other than the one stamped.
    pub drifted: bool,
}

impl DeviceCheck {
    /// The check of `function` from the two measurements.
    pub fn new(function: &str, before: DeviceSpeed, after: DeviceSpeed) -> Self {
        let change = |a: f64, b: f64| {
            if a > 0.0 {
                (b - a).abs() / a
            } else {
                0.0
            }
        };
        let drift = change(before.seq_mb_s, after.seq_mb_s)
            .max(change(before.rand_4k_iops, after.rand_4k_iops));
        Self {
            function: function.to_string(),
            before,
            after,
            drift,
            drifted: drift > DRIFT_LIMIT,
        }
    }
}

impl Calibration {
    /// The fault costs as `(name, cost)`, the measured ones only.
    pub fn faults(&self) -> Vec<(&'static str, &FaultCost)> {
        [
            ("4 KiB page-cache read fault", &self.read_fault_4k),
            ("4 KiB anonymous write fault", &self.anon_fault_4k),
            ("2 MiB page-cache fault", &self.fault_2m),
        ]
        .into_iter()
        .filter_map(|(name, c)| c.as_ref().map(|c| (name, c)))
        .collect()
    }

    /// Whether the device drifted while `function` was measured.
    pub fn drifted(&self, function: &str) -> bool {
        self.device
            .iter()
            .any(|d| d.function == function && d.drifted)
    }
}

/// Measures the three fault costs with `engine` under `probes` (an empty spec is left
/// out), snapshotting the probe under `snapshots`. A kind the host cannot produce (no transparent huge pages) is left out
/// with a warning; a wrong checksum fails the run, as it would a sample.
pub fn fault_costs(
    engine: &dyn Engine,
    probes: &ProbeStrategies,
    snapshots: &Path,
    timeout: Duration,
    warn: &dyn Fn(&str),
) -> Result<Calibration, BenchError> {
    let Ok(probe) = snapbpf_functions::Call::parse(PROBE_FUNCTION) else {
        return Ok(Calibration::default());
    };
    let dir = snapshots.join(PROBE_FUNCTION);
    engine
        .snapshot(PROBE_FUNCTION, &dir)
        .map_err(|source| BenchError::Snapshot {
            function: PROBE_FUNCTION.into(),
            source,
        })?;
    let mut host = probe.init();
    let pages = snapbpf_functions::faultprobe::REGION_PAGES as u64;
    let mut measure =
        |spec: &str, input: u32, faults: u64| -> Result<Option<FaultCost>, BenchError> {
            if spec.is_empty() {
                return Ok(None);
            }
            let strategy = engine
                .strategy(spec)
                .map_err(|source| BenchError::Strategy {
                    spec: spec.into(),
                    source,
                })?;
            let expected = format!("{:016x}", host.invoke(input));
            let mut exec_ms = Vec::new();
            for cold in std::iter::once(true).chain(std::iter::repeat_n(false, FAULT_SAMPLES)) {
                let cell = Cell {
                    strategy: strategy.clone(),
                    concurrency: 1,
                    cold,
                    input,
                    timeout,
                };
                let report = match engine.invoke(&dir, &cell) {
                    Ok(report) => report,
                    Err(e) => {
                        warn(&format!(
                            "calibration: {spec} cannot run here ({e}): left out"
                        ));
                        return Ok(None);
                    }
                };
                let run = report.runs.first().ok_or_else(|| {
                    BenchError::Config("calibration: an invocation reported no VM".into())
                })?;
                if run.checksum != expected {
                    return Err(BenchError::WrongAnswers {
                        count: 1,
                        first: format!(
                            "{PROBE_FUNCTION} under {spec}: checksum {} instead of {expected}",
                            run.checksum
                        ),
                        path: dir.clone(),
                    });
                }
                if !cold {
                    exec_ms.push(run.exec_ms);
                }
            }
            let median = crate::stats::Summary::of(&exec_ms).map_or(f64::NAN, |s| s.median);
            Ok(Some(FaultCost {
                strategy: spec.into(),
                input,
                faults,
                us: median * 1e3 / faults as f64,
                exec_ms,
            }))
        };
    Ok(Calibration {
        read_fault_4k: measure(&probes.read_fault_4k, 0, pages)?,
        anon_fault_4k: measure(&probes.anon_fault_4k, 1, pages)?,
        fault_2m: measure(&probes.fault_2m, 0, pages / 512)?,
        device: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_is_the_larger_relative_change() {
        let before = DeviceSpeed {
            seq_mb_s: 1000.0,
            rand_4k_iops: 10_000.0,
        };
        let slower = DeviceSpeed {
            seq_mb_s: 950.0,
            rand_4k_iops: 7_000.0,
        };
        let check = DeviceCheck::new("f", before, slower);
        assert!((check.drift - 0.3).abs() < 1e-9);
        assert!(check.drifted);
        let steady = DeviceCheck::new("f", before, before);
        assert_eq!(steady.drift, 0.0);
        assert!(!steady.drifted);
    }
}
