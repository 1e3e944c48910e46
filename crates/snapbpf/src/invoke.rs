//! Restoring VMs and running invocations: one VM in this process ([`run_one`]), or N VMs in
//! N worker processes started together ([`invoke`]).
//!
//! # Why one process per VM
//! Concurrent VMs run as separate processes, as Firecracker runs one VMM process per
//! microVM. That makes the memory accounting honest: each VM's private (anonymous) memory
//! is its process's `RssAnon`, and the page cache shared between VMs is counted once, from
//! the memory file's residency. Threads in one process would share one RSS.
//!
//! Worker protocol (stdin/stdout lines): the worker prints `ready`, waits for `go`, restores
//! and runs, prints its [`RunReport`] as one JSON line, then waits for stdin to close so
//! the launcher can measure memory while every VM is still alive.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use snapbpf_vmm::{CreateError, GuestEvent, MemoryError, MicroVm, RunError, StateError};

use crate::fsutil;
use crate::snapshot::{OpenError, Snapshot};
use crate::strategy::{PrefetchReport, Restored, StrategyError, StrategySpec};

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
}

/// System memory of a run, counted once for shared page cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryReport {
    /// `page_cache_kib` + `anon_kib`.
    pub total_kib: u64,
    /// Resident page cache of the snapshot's files.
    pub page_cache_kib: u64,
    /// Sum of the VM processes' private anonymous memory.
    pub anon_kib: u64,
}

/// The output of `snapbpf invoke --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvokeReport {
    /// Function name.
    pub function: String,
    /// Strategy label.
    pub strategy: String,
    /// Input number.
    pub input: u32,
    /// Whether the snapshot's files were evicted before the run.
    pub cold: bool,
    /// Number of VMs.
    pub concurrency: u32,
    /// One entry per VM.
    pub runs: Vec<RunReport>,
    /// System memory with all VMs alive after their invocation.
    pub memory: MemoryReport,
    /// Prefetch summed over the VMs.
    pub prefetch: PrefetchReport,
}

/// Errors running one VM.
#[derive(Debug, thiserror::Error)]
pub enum RunOneError {
    /// The snapshot is unusable.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The strategy failed.
    #[error(transparent)]
    Strategy(#[from] StrategyError),
    /// VM creation failed.
    #[error(transparent)]
    Create(#[from] CreateError),
    /// vCPU state could not be loaded.
    #[error(transparent)]
    State(#[from] StateError),
    /// The mailbox could not be written.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The snapshot's memory holds no mailbox of this ABI.
    #[error("snapshot memory does not hold a snapbpf guest of this ABI version")]
    ForeignMemory,
    /// The guest failed.
    #[error("invocation failed: {0}")]
    Run(#[from] RunError),
    /// The guest reported ready instead of a result.
    #[error("guest reported ready instead of finishing the invocation")]
    NoResult,
}

/// Options of one invocation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunOptions {
    /// Input number.
    pub input: u32,
    /// Longest the invocation may run.
    pub timeout: Duration,
}

/// Restores one VM from `dir` with `spec` in this process and runs one invocation.
///
/// Timing starts at the call: opening the snapshot and reading its vCPU state are part of
/// the restore, as they are for Firecracker.
pub fn run_one(
    dir: &Path,
    spec: &StrategySpec,
    opts: &RunOptions,
) -> Result<RunReport, RunOneError> {
    let strategy = spec.build();
    let faults_before = major_faults();
    let started = Instant::now();
    let snapshot = Snapshot::open(dir)?;
    let restored = strategy.restore(&snapshot)?;
    run_restored(&snapshot, restored, opts, started, faults_before)
}

/// Runs one invocation in a VM over memory a strategy already built (`restored`).
///
/// `started` is when the restore was requested and `faults_before` the process's major
/// faults then; strategies' record phases use this to run their recorded invocation.
pub fn run_restored(
    snapshot: &Snapshot,
    restored: Restored,
    opts: &RunOptions,
    started: Instant,
    faults_before: u64,
) -> Result<RunReport, RunOneError> {
    let mut handler = restored.handler;
    let mut vm = MicroVm::new(restored.memory)?;
    vm.set_state(&snapshot.vcpu)?;
    if !vm.mailbox_matches_abi()? {
        return Err(RunOneError::ForeignMemory);
    }
    vm.set_input(opts.input)?;
    vm.set_hints_enabled(restored.pv_hints)?;
    let (anon_before, _) = rss_kib();
    let resumed = Instant::now();
    let event = vm.run(handler.as_mut(), opts.timeout);
    let finished = Instant::now();
    let strategy_report = (restored.finish)();
    let checksum = match event? {
        GuestEvent::Done { checksum } => checksum,
        GuestEvent::Ready => return Err(RunOneError::NoResult),
    };
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
        readahead_kib: strategy_report.readahead_kib,
        prefetch: strategy_report.prefetch,
    })
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

/// Errors of a (possibly concurrent) invocation.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// The snapshot is unusable.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The strategy refused.
    #[error(transparent)]
    Strategy(#[from] StrategyError),
    /// Cold state could not be prepared.
    #[error(transparent)]
    Evict(#[from] fsutil::EvictError),
    /// Bad concurrency.
    #[error("--concurrency must be between 1 and 64, got {0}")]
    Concurrency(u32),
    /// Input out of range.
    #[error("function '{function}' takes inputs 0..{inputs}, got {input}")]
    Input {
        /// Function.
        function: String,
        /// Inputs it has.
        inputs: u32,
        /// Requested.
        input: u32,
    },
    /// A worker process could not be started or talked to.
    #[error("VM worker {index}: {reason}")]
    Worker {
        /// Worker number.
        index: usize,
        /// What went wrong.
        reason: String,
    },
    /// Warming the cache failed.
    #[error("cannot load {path} into the page cache: {source}")]
    Warm {
        /// File.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
}

/// A request for [`invoke`].
#[derive(Debug, Clone)]
pub struct InvokeRequest {
    /// Snapshot directory.
    pub dir: PathBuf,
    /// Strategy.
    pub spec: StrategySpec,
    /// Input and timeout.
    pub run: RunOptions,
    /// Evict the snapshot's files first; otherwise load the memory file fully (warm).
    pub cold: bool,
    /// Number of VMs started together.
    pub concurrency: u32,
}

/// Runs `concurrency` VMs of one snapshot at once, each in a worker process made by
/// `worker` (a command that runs [`worker_main`] with the request's arguments), and
/// gathers their reports and the run's system memory.
pub fn invoke(
    req: &InvokeRequest,
    worker: &dyn Fn() -> Command,
) -> Result<InvokeReport, InvokeError> {
    if req.concurrency == 0 || req.concurrency > 64 {
        return Err(InvokeError::Concurrency(req.concurrency));
    }
    let snapshot = Snapshot::open(&req.dir)?;
    let info = snapbpf_functions::info(&snapshot.meta.function)
        .ok_or_else(|| OpenError::UnknownFunction(snapshot.meta.function.clone()))?;
    if req.run.input >= info.inputs {
        return Err(InvokeError::Input {
            function: info.name.into(),
            inputs: info.inputs,
            input: req.run.input,
        });
    }
    let strategy = req.spec.build();
    strategy.check(&snapshot)?;
    let files = strategy.cold_files(&snapshot);
    if req.cold {
        for f in &files {
            fsutil::evict(f)?;
        }
    } else {
        let memory = snapshot.memory_path();
        fsutil::make_resident(&memory).map_err(|source| InvokeError::Warm {
            path: memory.clone(),
            source,
        })?;
    }

    let worker_err = |index: usize| move |reason: String| InvokeError::Worker { index, reason };
    let mut children: Vec<(Child, BufReader<std::process::ChildStdout>)> = Vec::new();
    let result = (|| {
        for index in 0..req.concurrency as usize {
            let mut child = worker()
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| worker_err(index)(format!("cannot start: {e}")))?;
            let stdout = child
                .stdout
                .take()
                .ok_or_else(|| worker_err(index)("no stdout".into()))?;
            children.push((child, BufReader::new(stdout)));
        }
        for (index, (_, out)) in children.iter_mut().enumerate() {
            let line = read_line(out).map_err(worker_err(index))?;
            if line != "ready" {
                return Err(worker_err(index)(format!("expected 'ready', got '{line}'")));
            }
        }
        // Release every VM at once.
        for (index, (child, _)) in children.iter_mut().enumerate() {
            let stdin = child
                .stdin
                .as_mut()
                .ok_or_else(|| worker_err(index)("no stdin".into()))?;
            stdin
                .write_all(b"go\n")
                .and_then(|_| stdin.flush())
                .map_err(|e| worker_err(index)(e.to_string()))?;
        }
        let mut runs = Vec::new();
        for (index, (_, out)) in children.iter_mut().enumerate() {
            let line = read_line(out).map_err(worker_err(index))?;
            let run: WorkerReply = serde_json::from_str(&line)
                .map_err(|e| worker_err(index)(format!("bad report '{line}': {e}")))?;
            match run {
                WorkerReply::Ok(run) => runs.push(run),
                WorkerReply::Err(e) => return Err(worker_err(index)(e)),
            }
        }
        // Every VM is alive and idle: the memory of the run as a whole.
        let page_cache_kib = files
            .iter()
            .filter_map(|f| std::fs::File::open(f).ok())
            .filter_map(|f| fsutil::resident_pages(&f).ok())
            .sum::<u64>()
            * (fsutil::page_size() as u64 / 1024);
        let anon_kib = runs.iter().map(|r| r.rss_anon_kib).sum();
        Ok((runs, page_cache_kib, anon_kib))
    })();
    for (mut child, _) in children {
        drop(child.stdin.take());
        let _ = child.wait();
    }
    let (runs, page_cache_kib, anon_kib) = result?;
    let prefetch =
        runs.iter()
            .filter_map(|r| r.prefetch)
            .fold(PrefetchReport::default(), |a, p| PrefetchReport {
                bytes: a.bytes + p.bytes,
                ranges: a.ranges + p.ranges,
                ms: a.ms.max(p.ms),
            });
    Ok(InvokeReport {
        function: snapshot.meta.function.clone(),
        strategy: req.spec.label(),
        input: req.run.input,
        cold: req.cold,
        concurrency: req.concurrency,
        runs,
        memory: MemoryReport {
            total_kib: page_cache_kib + anon_kib,
            page_cache_kib,
            anon_kib,
        },
        prefetch,
    })
}

fn read_line(out: &mut impl BufRead) -> Result<String, String> {
    let mut line = String::new();
    match out.read_line(&mut line) {
        Ok(0) => Err("exited without a report (see its error above)".into()),
        Ok(_) => Ok(line.trim_end().to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// What a worker prints after its run.
#[derive(Debug, Serialize, Deserialize)]
enum WorkerReply {
    Ok(RunReport),
    Err(String),
}

/// The worker side of [`invoke`]: waits for the go signal on stdin, runs one VM, prints
/// its report, and waits for stdin to close.
pub fn worker_main(dir: &Path, spec: &StrategySpec, opts: &RunOptions) -> std::io::Result<()> {
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "ready")?;
    stdout.flush()?;
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    if line.trim() != "go" {
        return Ok(());
    }
    let reply = match run_one(dir, spec, opts) {
        Ok(r) => WorkerReply::Ok(r),
        Err(e) => WorkerReply::Err(error_chain(&e)),
    };
    writeln!(stdout, "{}", serde_json::to_string(&reply)?)?;
    stdout.flush()?;
    // Stay alive (keeping guest memory mapped) until the launcher has measured memory.
    let mut rest = String::new();
    while stdin.lock().read_line(&mut rest)? > 0 {
        rest.clear();
    }
    Ok(())
}

/// An error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s
}
