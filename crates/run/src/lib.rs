//! One VM: run one invocation over guest memory a strategy restored, and measure it.
//!
//! This is the run primitive every restore and every record phase uses. It knows the VMM
//! and the snapshot store, not the strategies (it is a crate of its own so it cannot): a strategy hands it a [`Restored`] (the guest
//! memory, the exit handler for the guest's hints, and the helper threads it started
//! beside the vCPU), and gets back a [`RunReport`].
//!
//! # Helper threads
//! Prefetchers and page-fault handlers run beside the vCPU as [`Helpers`]. They are
//! stopped and joined here, in one place, once the vCPU has stopped, with one policy: a
//! helper that failed or panicked fails the run, whatever the guest returned. A run never
//! reports a prefetch that did not happen as zero bytes.

use std::collections::BTreeMap;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use snapbpf_vmm::{
    AbortSignal, CreateError, ExitHandler, GuestEvent, GuestMemory, MemoryError, MicroVm,
    StateError,
};

use snapbpf_store::Snapshot;

pub mod report;
pub use report::{InvokeReport, MemoryReport};

/// Prefetch activity of one restore.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PrefetchReport {
    /// Bytes requested.
    pub bytes: u64,
    /// Contiguous ranges requested.
    pub ranges: u64,
    /// Wall time of the prefetch, ms.
    pub ms: f64,
    /// Time from the restore request to the first prefetch request, ms: what it costs to
    /// load the working set and start (SnapBPF; the paper measured 1–2 ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_request_ms: Option<f64>,
    /// What one strategy alone reports, each under a key of its own (Sabre's
    /// `compression`): typed by the strategy that fills it ([`PrefetchReport::with_part`],
    /// [`PrefetchReport::part`]) and carried here as JSON, so this crate knows no strategy
    /// and a strategy's new field edits no other.
    #[serde(flatten)]
    pub parts: BTreeMap<String, serde_json::Value>,
}

impl PrefetchReport {
    /// The prefetch of two helpers, or of two VMs, taken together: bytes and ranges add
    /// up, the wall time is the longer one, the first request the earlier one; each
    /// strategy's own part is the first one's (alike for every VM of one run).
    pub fn merge(&self, other: &PrefetchReport) -> PrefetchReport {
        let mut parts = other.parts.clone();
        parts.extend(self.parts.clone());
        PrefetchReport {
            bytes: self.bytes + other.bytes,
            ranges: self.ranges + other.ranges,
            ms: self.ms.max(other.ms),
            first_request_ms: match (self.first_request_ms, other.first_request_ms) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            parts,
        }
    }

    /// The report with `part` under `key` (a part that cannot be encoded is left out:
    /// it is a measurement, never what the run's correctness rests on).
    pub fn with_part<T: Serialize>(mut self, key: &str, part: &T) -> Self {
        match serde_json::to_value(part) {
            Ok(value) => {
                self.parts.insert(key.into(), value);
            }
            Err(e) => tracing::warn!("prefetch report: {key} left out: {e}"),
        }
        self
    }

    /// The part under `key`, as the strategy that wrote it typed it.
    pub fn part<T: serde::de::DeserializeOwned>(&self, key: &str) -> Option<T> {
        serde_json::from_value(self.parts.get(key)?.clone()).ok()
    }
}

/// The error a helper thread ends with: its own typed error, kept whole as the source.
pub type HelperError = Box<dyn std::error::Error + Send + Sync>;

/// What a helper thread returns: the prefetch it did, if it prefetches.
pub type HelperResult = Result<Option<PrefetchReport>, HelperError>;

struct Helper {
    name: &'static str,
    stop: Option<Box<dyn FnOnce() + Send>>,
    join: JoinHandle<HelperResult>,
}

/// The threads a strategy runs beside one VM's vCPU. Dropping it without
/// [`Helpers::finish`] still stops and joins them.
#[derive(Default)]
pub struct Helpers {
    threads: Vec<Helper>,
    abort: AbortSignal,
}

impl std::fmt::Debug for Helpers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.threads.iter().map(|h| h.name).collect();
        f.debug_struct("Helpers").field("threads", &names).finish()
    }
}

impl Helpers {
    /// No helper threads.
    pub fn none() -> Self {
        Self::default()
    }

    /// The signal a helper raises to stop the vCPU at once, when it can no longer give the
    /// guest correct memory (a page-fault handler whose source failed). The run then ends
    /// with the helper's error.
    pub fn abort_signal(&self) -> AbortSignal {
        self.abort.clone()
    }

    /// Starts `work` on a thread named `name` that runs until it returns.
    pub fn spawn(
        &mut self,
        name: &'static str,
        work: impl FnOnce() -> HelperResult + Send + 'static,
    ) -> std::io::Result<()> {
        self.spawn_stoppable(name, || {}, work)
    }

    /// Starts `work` on a thread named `name`; `stop` asks it to return, once the vCPU
    /// has stopped (a fault handler serves until then).
    pub fn spawn_stoppable(
        &mut self,
        name: &'static str,
        stop: impl FnOnce() + Send + 'static,
        work: impl FnOnce() -> HelperResult + Send + 'static,
    ) -> std::io::Result<()> {
        let join = std::thread::Builder::new().name(name.into()).spawn(work)?;
        self.threads.push(Helper {
            name,
            stop: Some(Box::new(stop)),
            join,
        });
        Ok(())
    }

    /// Stops every helper, joins them all, and returns their prefetch (summed), or the
    /// first failure.
    pub fn finish(mut self) -> Result<Option<PrefetchReport>, RunError> {
        let threads = std::mem::take(&mut self.threads);
        let mut prefetch: Option<PrefetchReport> = None;
        let mut failure = None;
        for mut helper in threads {
            if let Some(stop) = helper.stop.take() {
                stop();
            }
            let outcome = match helper.join.join() {
                Ok(Ok(report)) => report,
                Ok(Err(source)) => {
                    failure.get_or_insert(RunError::Helper {
                        name: helper.name,
                        source,
                    });
                    None
                }
                Err(_) => {
                    failure.get_or_insert(RunError::HelperPanicked { name: helper.name });
                    None
                }
            };
            if let Some(p) = outcome {
                let sum = prefetch.get_or_insert_with(PrefetchReport::default);
                *sum = sum.merge(&p);
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(prefetch),
        }
    }
}

impl Drop for Helpers {
    fn drop(&mut self) {
        for mut helper in std::mem::take(&mut self.threads) {
            if let Some(stop) = helper.stop.take() {
                stop();
            }
            let _ = helper.join.join();
        }
    }
}

/// Guest memory a strategy built for one VM, with what runs beside it.
pub struct Restored {
    /// Guest memory to give the VM.
    pub memory: GuestMemory,
    /// Handles the guest's hypercalls for this strategy.
    pub handler: Box<dyn ExitHandler + Send>,
    /// Ask the guest for fresh-allocation hints (PV filtering); `handler` acts on them.
    pub pv_hints: bool,
    /// Threads beside the vCPU, joined when the invocation is over.
    pub helpers: Helpers,
    /// Prefetch completed before the vCPU runs (REAP installs its working set first).
    pub prefetched: Option<PrefetchReport>,
    /// Readahead window of the memory file, KiB, when the strategy sets one.
    pub readahead_kib: Option<u64>,
}

impl std::fmt::Debug for Restored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Restored")
            .field("memory", &self.memory)
            .field("pv_hints", &self.pv_hints)
            .field("helpers", &self.helpers)
            .finish_non_exhaustive()
    }
}

impl Restored {
    /// Memory with no hint handling, no helpers and nothing to report.
    pub fn plain(memory: GuestMemory) -> Self {
        Self {
            memory,
            handler: Box::new(snapbpf_vmm::IgnoreHints),
            pv_hints: false,
            helpers: Helpers::none(),
            prefetched: None,
            readahead_kib: None,
        }
    }
}

/// One VM's measurements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// From the restore request to the function's result, ms.
    pub e2e_ms: f64,
    /// From the restore request until the vCPU is ready to run, ms.
    pub restore_ms: f64,
    /// From resuming the vCPU to the result, ms.
    pub exec_ms: f64,
    /// Output checksum, hex.
    pub checksum: String,
    /// Major page faults the vCPU thread took: waits for storage on the guest's critical
    /// path (a strategy's helper threads, such as prefetchers, are not counted).
    pub major_faults: u64,
    /// Private anonymous memory of the VM process after the invocation, KiB.
    pub rss_anon_kib: u64,
    /// File-backed resident memory of the VM process after the invocation, KiB.
    pub rss_file_kib: u64,
    /// Private memory the invocation created (guest writes and fresh pages), KiB: the
    /// growth of `RssAnon` while the vCPU ran.
    pub written_kib: u64,
    /// VM exits for fresh-allocation hints.
    pub hint_exits: u64,
    /// Bytes of fresh allocations served without snapshot I/O.
    pub fresh_bytes: u64,
    /// Readahead window of the memory file, KiB, where the strategy sets one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readahead_kib: Option<u64>,
    /// Prefetch done for this VM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefetch: Option<PrefetchReport>,
    /// The VMM's own snapshot load call, ms, for a VMM in another process (Firecracker's
    /// `PUT /snapshot/load`, which returns once its vCPUs run); part of `restore_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_ms: Option<f64>,
    /// CPU time (user + system) the VM cost from the restore request to the result, ms:
    /// its vCPU thread and every helper (prefetch, premap, fault handling), and for a VMM
    /// in another process that process's too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<f64>,
}

/// Options of one invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOptions {
    /// Input number.
    pub input: u32,
    /// Longest the invocation may run.
    pub timeout: Duration,
}

/// Errors running one VM over restored memory.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// VM creation failed.
    #[error(transparent)]
    Create(#[from] CreateError),
    /// vCPU state could not be loaded.
    #[error(transparent)]
    State(#[from] StateError),
    /// The mailbox could not be written.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The snapshot was taken with another VMM, whose state this VMM cannot resume.
    #[error("the snapshot was taken with {}, not snapbpf's VMM: it restores under that VMM only", .vmm.name())]
    OtherVmm {
        /// The snapshot's VMM.
        vmm: snapbpf_store::snapshot::Vmm,
    },
    /// The snapshot's memory holds no mailbox of this ABI.
    #[error("snapshot memory does not hold a snapbpf guest of this ABI version")]
    ForeignMemory,
    /// The guest failed.
    #[error("invocation failed")]
    Guest(#[from] snapbpf_vmm::RunError),
    /// The guest reported ready instead of a result.
    #[error("guest reported ready instead of finishing the invocation")]
    NoResult,
    /// A helper thread failed: the run is void whatever the guest returned.
    #[error("helper thread {name} failed")]
    Helper {
        /// The thread.
        name: &'static str,
        /// Its error.
        #[source]
        source: HelperError,
    },
    /// A helper thread panicked.
    #[error("helper thread {name} panicked")]
    HelperPanicked {
        /// The thread.
        name: &'static str,
    },
}

/// Runs one invocation in a VM over memory a strategy restored.
///
/// `started` is when the restore was requested, `faults_before` the calling thread's
/// major faults then (see [`major_faults`]) and `cpu_before` this process's CPU time then
/// (see [`process_cpu`]): the restore's own work counts. Every VM runs in a process of
/// its own, so the process's CPU is the VM's.
pub fn run_restored(
    snapshot: &Snapshot,
    restored: Restored,
    opts: &RunOptions,
    started: Instant,
    faults_before: u64,
    cpu_before: Duration,
) -> Result<RunReport, RunError> {
    let Restored {
        memory,
        mut handler,
        pv_hints,
        helpers,
        prefetched,
        readahead_kib,
    } = restored;
    // Helpers are joined on every path: `helpers` outlives the VM only on success, where
    // it is finished explicitly; on an early return its drop stops and joins them.
    let mut vm = MicroVm::new(memory)?;
    let vcpu = snapshot.vcpu().ok_or(RunError::OtherVmm {
        vmm: snapshot.vmm(),
    })?;
    vm.set_state(vcpu)?;
    if !vm.mailbox_matches_abi()? {
        return Err(RunError::ForeignMemory);
    }
    vm.set_input(opts.input)?;
    vm.set_hints_enabled(pv_hints)?;
    let (anon_before, _) = rss_kib();
    let resumed = Instant::now();
    let event = vm.run_abortable(handler.as_mut(), opts.timeout, &helpers.abort_signal());
    let finished = Instant::now();
    let helped = match (&event, helpers.finish()) {
        // The helper that stopped the vCPU says why.
        (Err(snapbpf_vmm::RunError::Aborted), Err(cause)) => return Err(cause),
        (_, helped) => helped,
    };
    let checksum = match event? {
        GuestEvent::Done { checksum } => checksum,
        GuestEvent::Ready => return Err(RunError::NoResult),
    };
    let prefetch_during = helped?;
    let (rss_anon_kib, rss_file_kib) = rss_kib();
    let stats = vm.exit_stats();
    Ok(RunReport {
        e2e_ms: ms(finished - started),
        restore_ms: ms(resumed - started),
        exec_ms: ms(finished - resumed),
        checksum: format!("{checksum:016x}"),
        major_faults: major_faults().saturating_sub(faults_before),
        rss_anon_kib,
        rss_file_kib,
        written_kib: rss_anon_kib.saturating_sub(anon_before),
        hint_exits: stats.hint_exits,
        fresh_bytes: stats.hinted_bytes,
        readahead_kib,
        prefetch: prefetched.or(prefetch_during),
        load_ms: None,
        // The helpers were joined above: their threads' time is the process's now.
        cpu_ms: Some(ms(process_cpu().saturating_sub(cpu_before))),
    })
}

/// CPU time (user + system) this process has used so far, every thread's, joined ones
/// included.
pub fn process_cpu() -> Duration {
    // SAFETY: getrusage fills the struct we pass; a zeroed rusage is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to an owned rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let of = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    of(usage.ru_utime) + of(usage.ru_stime)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Major faults the calling thread (the vCPU thread) has taken so far. KVM takes guest
/// page faults in the context of the thread running `KVM_RUN`.
pub fn major_faults() -> u64 {
    // SAFETY: getrusage fills the struct we pass; a zeroed rusage is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to an owned rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) } != 0 {
        return 0;
    }
    usage.ru_majflt as u64
}

/// `RssAnon` and `RssFile` of this process, KiB.
pub fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("RssAnon:"), field("RssFile:"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn report(bytes: u64, ms: f64, first: Option<f64>) -> PrefetchReport {
        PrefetchReport {
            bytes,
            ranges: 1,
            ms,
            first_request_ms: first,
            ..PrefetchReport::default()
        }
    }

    #[test]
    fn prefetch_reports_merge_as_one_prefetch() {
        let a = report(10, 5.0, Some(2.0)).with_part("compression", &serde_json::json!({"x": 1}));
        let b = report(20, 7.0, None).with_part("compression", &serde_json::json!({"x": 2}));
        let m = a.merge(&b);
        assert_eq!((m.bytes, m.ranges), (30, 2));
        assert_eq!(m.ms, 7.0, "the longer wall time");
        assert_eq!(m.first_request_ms, Some(2.0), "the one first request");
        assert_eq!(
            m.part::<serde_json::Value>("compression"),
            Some(serde_json::json!({"x": 1})),
            "a strategy's own part: the first one's"
        );
        let both = report(0, 0.0, Some(3.0)).merge(&report(0, 0.0, Some(1.5)));
        assert_eq!(both.first_request_ms, Some(1.5), "the earlier one");
        // Parts travel under their key in JSON, beside the common fields.
        let json = serde_json::to_value(&a).expect("json");
        assert_eq!(json["compression"]["x"], 1);
        let back: PrefetchReport = serde_json::from_value(json).expect("back");
        assert_eq!(back, a);
    }

    #[test]
    fn helpers_are_stopped_joined_and_summed() {
        let mut helpers = Helpers::none();
        helpers
            .spawn("a", || Ok(Some(report(1, 1.0, None))))
            .expect("spawn");
        let stopped = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let seen = stopped.clone();
        helpers
            .spawn_stoppable(
                "b",
                move || drop(tx),
                move || {
                    // Serves until asked to stop, as a fault handler does.
                    let _ = rx.recv();
                    seen.store(true, Ordering::SeqCst);
                    Ok(Some(report(2, 3.0, None)))
                },
            )
            .expect("spawn");
        helpers.spawn("c", || Ok(None)).expect("spawn");
        let sum = helpers.finish().expect("all succeed").expect("a prefetch");
        assert!(stopped.load(Ordering::SeqCst), "stop reached the helper");
        assert_eq!((sum.bytes, sum.ranges, sum.ms), (3, 2, 3.0));
    }

    #[test]
    fn a_failed_or_panicked_helper_fails_the_run() {
        let mut helpers = Helpers::none();
        helpers
            .spawn("fine", || Ok(Some(report(1, 1.0, None))))
            .expect("spawn");
        helpers
            .spawn("broken", || Err("the source went away".into()))
            .expect("spawn");
        match helpers.finish() {
            Err(RunError::Helper { name, source }) => {
                assert_eq!(name, "broken");
                assert_eq!(source.to_string(), "the source went away");
            }
            other => panic!("expected the helper's failure, got {other:?}"),
        }
        let mut helpers = Helpers::none();
        helpers
            .spawn("panics", || panic!("a bug in a helper"))
            .expect("spawn");
        assert!(matches!(
            helpers.finish(),
            Err(RunError::HelperPanicked { name: "panics" })
        ));
        // Dropped without finish: still stopped and joined, nothing leaks or hangs.
        let mut helpers = Helpers::none();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        helpers
            .spawn_stoppable(
                "waits",
                move || drop(tx),
                move || {
                    let _ = rx.recv();
                    Ok(None)
                },
            )
            .expect("spawn");
        drop(helpers);
    }
}
