//! The snapbpf engine as the evaluation harness sees it: [`snapbpf_bench::Engine`] over
//! the library's calls. The harness crate knows no strategy and links no BPF; this glue
//! is where the two meet.

use std::path::{Path, PathBuf};
use std::time::Duration;

use snapbpf::launch::{self, InvokeReport, InvokeRequest};
use snapbpf::run::RunOptions;
use snapbpf::strategy::StrategySpec;
use snapbpf_bench::{
    Cell, DeviceBound, Engine, EngineError, RecordFacts, SnapshotFacts, StrategyEntry,
};

/// The engine, running VM workers as `exe __worker`.
#[derive(Debug)]
pub struct SnapbpfEngine {
    /// This executable.
    pub exe: PathBuf,
    /// The storage class every VM reads its snapshot from.
    pub device: snapbpf::storage_profile::StorageProfile,
    /// The VMM snapshots are taken with and restored under.
    pub vmm: snapbpf::snapshot::Vmm,
    /// How snapshots' memory files hold zero pages.
    pub layout: snapbpf::snapshot::MemoryLayout,
    /// A file on the snapshots' device to measure it with during the run (direct reads).
    pub probe: Option<PathBuf>,
}

/// What the device holding `probe` delivers to direct reads under `profile`'s throttle
/// (`None` where the profile has no throttle, or it cannot hold this thread).
pub fn measure_under(
    profile: snapbpf::storage_profile::StorageProfile,
    probe: &Path,
) -> anyhow::Result<Option<snapbpf::storage_profile::DeviceSpeed>> {
    use anyhow::Context;
    let Some(throttle) = snapbpf::storage_profile::Throttle::new(profile, probe)? else {
        return Ok(None);
    };
    match throttle.run_throttled(|| snapbpf::storage_profile::measure(probe))? {
        Some(speed) => Ok(Some(speed.context("measure the throttled device")?)),
        None => Ok(None),
    }
}

/// The harness's description of `spec`.
pub fn entry(spec: &StrategySpec) -> StrategyEntry {
    StrategyEntry {
        spec: spec.to_arg(),
        label: spec.label(),
        name: spec.name().to_string(),
        record: spec.info().record,
    }
}

fn spec_of(entry: &StrategyEntry) -> Result<StrategySpec, EngineError> {
    Ok(StrategySpec::parse(&entry.spec)?)
}

impl Engine for SnapbpfEngine {
    fn strategy(&self, spec: &str) -> Result<StrategyEntry, EngineError> {
        Ok(entry(&StrategySpec::parse(spec)?))
    }

    fn snapshot(&self, function: &str, dir: &Path) -> Result<SnapshotFacts, EngineError> {
        use std::os::unix::fs::MetadataExt;
        let snapshot = snapbpf::snapshot::ensure_with(function, dir, self.vmm, self.layout)?;
        Ok(SnapshotFacts {
            function: function.to_string(),
            mem_bytes: snapshot.meta.mem_bytes,
            disk_bytes: std::fs::metadata(snapshot.memory_path()).map_or(0, |m| m.blocks() * 512),
            init_ms: snapshot.meta.init_ms,
        })
    }

    fn record(
        &self,
        dir: &Path,
        strategy: &StrategyEntry,
        input: u32,
        timeout: Duration,
    ) -> Result<RecordFacts, EngineError> {
        let snapshot = snapbpf::snapshot::open(dir)?;
        let report = snapbpf::strategy::record(&spec_of(strategy)?, &snapshot, input, timeout)?;
        Ok(RecordFacts {
            function: snapshot.meta.function.clone(),
            strategy: strategy.name.clone(),
            ms: report.ms,
            ws_pages: report.pages,
            capture_cpu_ms: report.capture_cpu_ms,
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
        })
    }

    fn reference(
        &self,
        function: &str,
        input: u32,
        timeout: Duration,
    ) -> Result<String, EngineError> {
        let boot = snapbpf::snapshot::fresh_boot(function, input, 1, None, timeout)?;
        let (checksum, _) = boot
            .invocations
            .first()
            .ok_or("the fresh boot ran no invocation")?;
        Ok(format!("{checksum:016x}"))
    }

    fn invoke(&self, dir: &Path, cell: &Cell) -> Result<InvokeReport, EngineError> {
        let req = InvokeRequest {
            dir: dir.to_path_buf(),
            spec: spec_of(&cell.strategy)?,
            run: RunOptions {
                input: cell.input,
                timeout: cell.timeout,
            },
            cache: snapbpf::launch::CacheStart::cold_if(cell.cold),
            device: self.device,
            concurrency: cell.concurrency,
        };
        Ok(launch::invoke(&req, &|| {
            crate::cmd::worker_command(&self.exe)
        })?)
    }

    fn device_time(
        &self,
        dir: &Path,
        strategy: &StrategyEntry,
        repeat: u32,
    ) -> Option<Result<DeviceBound, EngineError>> {
        let (snapshot, spec) = match snapbpf::snapshot::open(dir)
            .map_err(EngineError::from)
            .and_then(|s| Ok((s, spec_of(strategy)?)))
        {
            Ok(found) => found,
            Err(e) => return Some(Err(e)),
        };
        let measured = snapbpf::measure::device_time(&snapshot, &spec, repeat)?;
        Some(
            measured
                .map(|d| DeviceBound {
                    function: snapshot.meta.function.clone(),
                    bytes: d.bytes,
                    ranges: d.ranges,
                    ms: d.ms,
                })
                .map_err(EngineError::from),
        )
    }

    fn device_speed(&self) -> Option<Result<snapbpf_bench::calibrate::DeviceSpeed, EngineError>> {
        let probe = self.probe.as_ref()?;
        let measured = measure_under(self.device, probe).and_then(|throttled| match throttled {
            Some(speed) => Ok(speed),
            None => Ok(snapbpf::storage_profile::measure(probe)?),
        });
        Some(
            measured
                .map(|s| snapbpf_bench::calibrate::DeviceSpeed {
                    seq_mb_s: s.seq_mb_s,
                    rand_4k_iops: s.rand_4k_iops,
                })
                .map_err(EngineError::from),
        )
    }
}
