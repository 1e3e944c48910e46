//! N VMs of one snapshot at once, in N worker processes started together ([`invoke`]),
//! and the worker side of that protocol ([`worker_main`]).
//!
//! # Why one process per VM
//! Concurrent VMs run as separate processes, as Firecracker runs one VMM process per
//! microVM. That makes the memory accounting honest: each VM's private (anonymous) memory
//! is its process's `RssAnon`, and the page cache shared between VMs is counted once, from
//! the memory file's residency. Threads in one process would share one RSS.
//!
//! # Worker protocol (stdin/stdout lines)
//! The launcher writes one JSON line, [`WorkerArgs`], to the worker's stdin (it has
//! already checked the snapshot and the strategy's artifacts); the worker parses it,
//! prints `ready` and waits for `go`, so every VM starts at once. It reads nothing else
//! before `go`: a cold start stays cold. It restores and runs, prints its [`WorkerReply`] as one JSON line, and
//! then waits for stdin to close so the launcher can measure memory while every VM is
//! still alive. The executable is the front-end's business (`snapbpf __worker`); the
//! protocol is this module's.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::run::{self, PrefetchReport, RunError, RunOptions, RunReport};
pub use crate::run::{InvokeReport, MemoryReport};
use crate::snapshot::{OpenError, Snapshot};
use crate::strategy::{StrategyError, StrategySpec};
use snapbpf_store::fsutil;

/// Errors restoring and running one VM in this process.
#[derive(Debug, thiserror::Error)]
pub enum RunOneError {
    /// The snapshot is unusable.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The strategy failed to restore.
    #[error(transparent)]
    Strategy(#[from] StrategyError),
    /// The VM failed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The VM under Firecracker failed.
    #[error(transparent)]
    Firecracker(#[from] crate::firecracker::FirecrackerError),
}

/// What keeps a VM alive after its report, until the launcher has measured memory: for
/// Firecracker its process (and the handler beside it); nothing for snapbpf's own VMM,
/// whose memory the worker process itself holds until it exits.
#[derive(Debug)]
pub enum Alive {
    /// snapbpf's VMM ran in this process.
    Here,
    /// A Firecracker process.
    Firecracker(Box<crate::firecracker::Running>),
}

/// Restores one VM from `dir` with `spec` under the VMM the snapshot was taken with and
/// runs one invocation.
pub fn run_any(
    dir: &Path,
    spec: &StrategySpec,
    opts: &RunOptions,
) -> Result<(RunReport, Alive), RunOneError> {
    let vmm = crate::snapshot::open_metadata(dir)?.vmm();
    match vmm {
        snapbpf_store::snapshot::Vmm::Builtin => Ok((run_one(dir, spec, opts)?, Alive::Here)),
        snapbpf_store::snapshot::Vmm::Firecracker => {
            let (report, running) = crate::firecracker::run_one(dir, spec, opts)?;
            Ok((report, Alive::Firecracker(Box::new(running))))
        }
    }
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
    let faults_before = run::major_faults();
    let cpu_before = run::process_cpu();
    let started = Instant::now();
    let snapshot = crate::snapshot::open(dir)?;
    let restored = strategy.restore(&snapshot)?;
    Ok(run::run_restored(
        &snapshot,
        restored,
        opts,
        started,
        faults_before,
        cpu_before,
    )?)
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
    /// The snapshot directory is being recorded into.
    #[error(transparent)]
    Lock(#[from] snapbpf_os::lock::LockError),
    /// The device profile's throttle could not be set up.
    #[error(transparent)]
    Throttle(#[from] crate::storage_profile::ThrottleError),
    /// The number of VMs is out of range.
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
        reason: WorkerFailure,
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

/// The page cache an invocation starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStart {
    /// The strategy's files evicted first (checked with `mincore`).
    Cold,
    /// The memory file loaded fully first.
    Warm,
    /// As the caller left it: for composing with a prefetch run beside the VMM
    /// (`snapbpf prefetch` started with it, as an orchestrator does for Firecracker).
    AsIs,
}

impl CacheStart {
    /// `Cold` when `cold`, else `Warm`.
    pub fn cold_if(cold: bool) -> Self {
        if cold {
            Self::Cold
        } else {
            Self::Warm
        }
    }
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
    /// The page cache the VMs start from.
    pub cache: CacheStart,
    /// Number of VMs started together.
    pub concurrency: u32,
    /// The storage class the VMs read the snapshot from.
    pub device: crate::storage_profile::StorageProfile,
}

/// What went wrong with one worker process.
#[derive(Debug, thiserror::Error)]
pub enum WorkerFailure {
    /// It could not be started.
    #[error("cannot start: {0}")]
    Spawn(#[source] std::io::Error),
    /// Talking to it failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// It exited before it said what the protocol expects.
    #[error("exited without a report (see its error above)")]
    Exited,
    /// It said nothing within the protocol's deadline (it was killed).
    #[error("said nothing for {} s while {waiting_for}; killed it", .waited.as_secs())]
    Silent {
        /// What the launcher waited for.
        waiting_for: &'static str,
        /// How long.
        waited: Duration,
    },
    /// It said something the protocol does not expect.
    #[error("expected {expected}, got '{got}'")]
    Protocol {
        /// What was expected.
        expected: &'static str,
        /// The line received.
        got: String,
    },
    /// Its run failed; the worker's error chain.
    #[error("{0}")]
    Failed(String),
}

/// What the launcher tells one worker: everything it needs to restore and run one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerArgs {
    /// Snapshot directory.
    pub dir: PathBuf,
    /// Strategy.
    pub spec: StrategySpec,
    /// Input and timeout.
    pub run: RunOptions,
}

/// Runs `concurrency` VMs of one snapshot at once, each in a worker process made by
/// `worker` (a command that runs [`worker_main`]), and gathers their reports and the
/// run's system memory.
pub fn invoke(
    req: &InvokeRequest,
    worker: &dyn Fn() -> Command,
) -> Result<InvokeReport, InvokeError> {
    let prepared = prepare(req)?;
    let args = WorkerArgs {
        dir: req.dir.clone(),
        spec: req.spec.clone(),
        run: req.run.clone(),
    };
    let mut args_line = serde_json::to_vec(&args).map_err(|e| {
        worker_err(0)(WorkerFailure::Io {
            what: "encode the worker's arguments",
            source: e.into(),
        })
    })?;
    args_line.push(b'\n');
    let mut workers = Workers::new();
    // Every VM's reads of the snapshot's device go through the profile's throttle.
    let throttle = crate::storage_profile::Throttle::new(req.device, &req.dir)?;
    let result = (|| {
        workers.start(req.concurrency, worker, &args_line, throttle.as_ref())?;
        workers.release()?;
        let runs = workers.reports(Instant::now() + req.run.timeout + REPORT_GRACE)?;
        // Every VM is alive and idle: the memory of the run as a whole.
        let memory = prepared.memory(&runs);
        Ok::<_, InvokeError>((runs, memory))
    })();
    workers.reap(result.is_err());
    let (runs, memory) = result?;
    let prefetch = runs
        .iter()
        .filter_map(|r| r.prefetch.as_ref())
        .fold(PrefetchReport::default(), |a, p| a.merge(p));
    Ok(InvokeReport {
        function: prepared.snapshot.meta.function.clone(),
        strategy: req.spec.label(),
        input: req.run.input,
        cold: req.cache == CacheStart::Cold,
        concurrency: req.concurrency,
        runs,
        memory,
        prefetch,
    })
}

/// An invocation checked and ready to start its VMs.
struct Prepared {
    snapshot: Snapshot,
    strategy: Box<dyn crate::strategy::Strategy>,
    /// The files whose page cache the run holds (and a cold start evicted).
    files: Vec<PathBuf>,
    /// Held until every worker is gone: a `record` into this directory would change the
    /// artifacts under the VMs.
    _lock: snapbpf_os::lock::DirLock,
}

/// Everything that can be refused before a VM starts: the snapshot, the input, the
/// strategy's artifacts; then the page cache the VMs start from.
fn prepare(req: &InvokeRequest) -> Result<Prepared, InvokeError> {
    if req.concurrency == 0 || req.concurrency > 64 {
        return Err(InvokeError::Concurrency(req.concurrency));
    }
    let snapshot = crate::snapshot::open(&req.dir)?;
    let lock = snapbpf_os::lock::lock_dir(&req.dir, snapbpf_os::lock::LockMode::Shared)?;
    let info = snapbpf_functions::Call::parse(&snapshot.meta.function)
        .map_err(|_| OpenError::UnknownFunction(snapshot.meta.function.clone()))?
        .info;
    if req.run.input >= info.inputs {
        return Err(InvokeError::Input {
            function: info.name.into(),
            inputs: info.inputs,
            input: req.run.input,
        });
    }
    crate::strategy::check_vmm(&req.spec, snapshot.vmm())?;
    let strategy = req.spec.build();
    strategy.check(&snapshot)?;
    let files = req.spec.cold_files(&snapshot);
    match req.cache {
        CacheStart::Cold => {
            for f in &files {
                fsutil::evict(f)?;
            }
        }
        CacheStart::Warm => {
            let memory = snapshot.memory_path();
            fsutil::make_resident(&memory).map_err(|source| InvokeError::Warm {
                path: memory.clone(),
                source,
            })?;
        }
        CacheStart::AsIs => {}
    }
    Ok(Prepared {
        snapshot,
        strategy,
        files,
        _lock: lock,
    })
}

impl Prepared {
    /// The run's system memory with every VM alive: the snapshot's page cache once, an
    /// in-memory store's copy once, and every VM's anonymous memory.
    fn memory(&self, runs: &[RunReport]) -> MemoryReport {
        let page_cache_kib = self
            .files
            .iter()
            .filter_map(|f| std::fs::File::open(f).ok())
            .filter_map(|f| fsutil::resident_pages(&f).ok())
            .sum::<u64>()
            * (fsutil::page_size() as u64 / 1024);
        let anon_kib = runs.iter().map(|r| r.rss_anon_kib).sum();
        let store_kib = self.strategy.shared_memory_bytes(&self.snapshot) / 1024;
        MemoryReport {
            total_kib: page_cache_kib + store_kib + anon_kib,
            page_cache_kib,
            anon_kib,
            store_kib,
        }
    }
}

fn worker_err(index: usize) -> impl Fn(WorkerFailure) -> InvokeError {
    move |reason: WorkerFailure| InvokeError::Worker { index, reason }
}

/// The worker processes of one invocation: started, released together, read, and reaped
/// on every path (killed by an interrupt meanwhile).
struct Workers {
    children: Vec<(Child, WorkerOutput)>,
    pids: std::sync::Arc<std::sync::Mutex<Vec<u32>>>,
    _interrupted: snapbpf_os::interrupt::Guard,
}

impl Workers {
    fn new() -> Self {
        let pids = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u32>::new()));
        let undo_pids = pids.clone();
        let interrupted =
            snapbpf_os::interrupt::on_interrupt("stopped the VM workers", move || {
                if let Ok(pids) = undo_pids.lock() {
                    for &pid in pids.iter() {
                        // SAFETY: kill(2) on a worker we started and have not reaped yet.
                        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                    }
                }
            });
        Self {
            children: Vec::new(),
            pids,
            _interrupted: interrupted,
        }
    }

    /// Starts `n` workers, each moved into the throttle first and handed its arguments,
    /// and waits until every one says `ready`.
    fn start(
        &mut self,
        n: u32,
        worker: &dyn Fn() -> Command,
        args_line: &[u8],
        throttle: Option<&crate::storage_profile::Throttle>,
    ) -> Result<(), InvokeError> {
        let ready_by = Instant::now() + READY_DEADLINE;
        for index in 0..n as usize {
            let mut command = worker();
            snapbpf_os::terminate::die_with_parent(&mut command);
            let mut child = command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| worker_err(index)(WorkerFailure::Spawn(e)))?;
            let stdout = child.stdout.take().ok_or_else(|| {
                worker_err(index)(WorkerFailure::Io {
                    what: "take its stdout",
                    source: std::io::ErrorKind::BrokenPipe.into(),
                })
            })?;
            if let Some(throttle) = throttle {
                throttle.add_process(child.id())?;
            }
            send(&mut child, args_line).map_err(worker_err(index))?;
            if let Ok(mut pids) = self.pids.lock() {
                pids.push(child.id());
            }
            self.children.push((child, WorkerOutput::new(stdout)));
        }
        for (index, (_, out)) in self.children.iter_mut().enumerate() {
            let line = out
                .line(ready_by, "it started")
                .map_err(worker_err(index))?;
            if line != "ready" {
                // A worker that refused its arguments says why instead.
                return Err(worker_err(index)(match serde_json::from_str(&line) {
                    Ok(WorkerReply::Err(e)) => WorkerFailure::Failed(e),
                    _ => WorkerFailure::Protocol {
                        expected: "'ready'",
                        got: line,
                    },
                }));
            }
        }
        Ok(())
    }

    /// Releases every VM at once.
    fn release(&mut self) -> Result<(), InvokeError> {
        for (index, (child, _)) in self.children.iter_mut().enumerate() {
            send(child, b"go\n").map_err(worker_err(index))?;
        }
        Ok(())
    }

    /// Every worker's report, by `deadline`.
    fn reports(&mut self, deadline: Instant) -> Result<Vec<RunReport>, InvokeError> {
        let mut runs = Vec::new();
        for (index, (_, out)) in self.children.iter_mut().enumerate() {
            let line = out
                .line(deadline, "it restored and ran its VM")
                .map_err(worker_err(index))?;
            match serde_json::from_str(&line) {
                Ok(WorkerReply::Ok(run)) => runs.push(run),
                Ok(WorkerReply::Err(e)) => return Err(worker_err(index)(WorkerFailure::Failed(e))),
                Err(_) => {
                    return Err(worker_err(index)(WorkerFailure::Protocol {
                        expected: "a JSON report",
                        got: line,
                    }))
                }
            }
        }
        Ok(runs)
    }

    /// Closes every worker's stdin (it exits) and reaps it; after a failure kills it
    /// first, since a stuck worker (or one still running its VM) never exits on its own.
    fn reap(mut self, failed: bool) {
        for (mut child, _) in std::mem::take(&mut self.children) {
            drop(child.stdin.take());
            if failed {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        // Reaped: their pids may be reused, an interrupt must not kill those.
        if let Ok(mut pids) = self.pids.lock() {
            pids.clear();
        }
    }
}

/// Writes `bytes` to a worker's stdin.
fn send(child: &mut Child, bytes: &[u8]) -> Result<(), WorkerFailure> {
    let stdin = child.stdin.as_mut().ok_or(WorkerFailure::Io {
        what: "write to it",
        source: std::io::ErrorKind::BrokenPipe.into(),
    })?;
    stdin
        .write_all(bytes)
        .and_then(|_| stdin.flush())
        .map_err(|source| WorkerFailure::Io {
            what: "write to it",
            source,
        })
}

/// Longest line a worker may send (a report is a few hundred bytes).
const MAX_LINE: u64 = 64 << 10;
/// Longest a worker may take to start and say `ready`.
pub const READY_DEADLINE: Duration = Duration::from_secs(20);
/// How much longer than the run's timeout a worker may take to report: restoring (REAP
/// may wait up to two minutes for an external handler's prefetch) and reporting.
pub const REPORT_GRACE: Duration = Duration::from_secs(180);

/// A worker's stdout, read in lines with deadlines.
struct WorkerOutput {
    out: std::process::ChildStdout,
    pending: Vec<u8>,
}

impl WorkerOutput {
    fn new(out: std::process::ChildStdout) -> Self {
        Self {
            out,
            pending: Vec::new(),
        }
    }

    /// The next line, without its newline, if it arrives before `deadline`.
    fn line(
        &mut self,
        deadline: Instant,
        waiting_for: &'static str,
    ) -> Result<String, WorkerFailure> {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let started = Instant::now();
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                return Ok(String::from_utf8_lossy(&line).trim_end().to_string());
            }
            if self.pending.len() as u64 > MAX_LINE {
                return Err(WorkerFailure::Protocol {
                    expected: "a line",
                    got: format!("more than {MAX_LINE} bytes without a newline"),
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(WorkerFailure::Silent {
                    waiting_for,
                    waited: started.elapsed(),
                });
            }
            let mut fds = [libc::pollfd {
                fd: self.out.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: `fds` is a valid array of one pollfd for the call's duration.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) };
            if rc < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(WorkerFailure::Io {
                    what: "wait for it",
                    source: err,
                });
            }
            if rc == 0 {
                continue;
            }
            let mut chunk = [0u8; 4096];
            match self.out.read(&mut chunk) {
                Ok(0) => return Err(WorkerFailure::Exited),
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(WorkerFailure::Io {
                        what: "read from it",
                        source,
                    })
                }
            }
        }
    }
}

/// What a worker prints after its run (or instead of `ready` when it refuses its
/// arguments).
#[derive(Debug, Serialize, Deserialize)]
pub enum WorkerReply {
    /// The run's report.
    Ok(RunReport),
    /// Why it failed: the error chain, one line.
    Err(String),
}

/// Errors of the worker side of the protocol: only its own pipes; a failed run is
/// reported to the launcher, not returned.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// stdin or stdout failed.
    #[error("worker protocol: {0}")]
    Io(#[from] std::io::Error),
}

/// The worker side of [`invoke`]: reads its [`WorkerArgs`], waits for the go signal, runs one VM, prints its report, and waits for stdin
/// to close.
pub fn worker_main() -> Result<(), WorkerError> {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut stdout = std::io::stdout().lock();
    let reply = |stdout: &mut std::io::StdoutLock<'_>, r: &WorkerReply| -> std::io::Result<()> {
        writeln!(stdout, "{}", serde_json::to_string(r)?)?;
        stdout.flush()
    };
    let mut line = String::new();
    std::io::Read::take(&mut input, MAX_LINE).read_line(&mut line)?;
    let args: WorkerArgs = match serde_json::from_str(line.trim_end()) {
        Ok(a) => a,
        Err(e) => {
            reply(
                &mut stdout,
                &WorkerReply::Err(format!("bad worker arguments: {e}")),
            )?;
            return Ok(());
        }
    };
    writeln!(stdout, "ready")?;
    stdout.flush()?;
    line.clear();
    std::io::Read::take(&mut input, MAX_LINE).read_line(&mut line)?;
    if line.trim() != "go" {
        return Ok(());
    }
    let (outcome, _alive) = match run_any(&args.dir, &args.spec, &args.run) {
        Ok((r, alive)) => (WorkerReply::Ok(r), Some(alive)),
        Err(e) => (WorkerReply::Err(crate::error_chain(&e)), None),
    };
    reply(&mut stdout, &outcome)?;
    // Stay alive (keeping guest memory mapped) until the launcher has measured memory.
    let mut rest = Vec::new();
    while input.read_until(b'\n', &mut rest)? > 0 {
        rest.clear();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child that runs `script` and whose stdout the launcher reads.
    fn child(script: &str) -> (Child, WorkerOutput) {
        let mut child = Command::new("sh")
            .args(["-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("sh");
        let out = child.stdout.take().expect("stdout");
        (child, WorkerOutput::new(out))
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    #[test]
    fn lines_arrive_whole_and_in_order() {
        let (mut c, mut out) = child("printf 'rea'; sleep 0.1; printf 'dy\\n{\"x\":1}\\n'");
        assert_eq!(out.line(soon(), "ready").expect("line"), "ready");
        assert_eq!(out.line(soon(), "report").expect("line"), r#"{"x":1}"#);
        assert!(matches!(
            out.line(soon(), "more"),
            Err(WorkerFailure::Exited)
        ));
        let _ = c.wait();
    }

    #[test]
    fn a_silent_worker_is_given_up_at_the_deadline() {
        let (mut c, mut out) = child("sleep 30");
        let started = Instant::now();
        let e = out
            .line(Instant::now() + Duration::from_millis(300), "it started")
            .expect_err("silent");
        assert!(matches!(e, WorkerFailure::Silent { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5), "bounded wait");
        let _ = c.kill();
        let _ = c.wait();
    }

    #[test]
    fn an_endless_line_is_refused() {
        let (mut c, mut out) = child("head -c 200000 /dev/zero | tr '\\0' x");
        let e = out.line(soon(), "a report").expect_err("too long");
        assert!(
            matches!(e, WorkerFailure::Protocol { .. }),
            "{e}: a line without end is refused, not buffered without bound"
        );
        let _ = c.kill();
        let _ = c.wait();
    }

    #[test]
    fn replies_and_arguments_round_trip() {
        let args = WorkerArgs {
            dir: PathBuf::from("/snaps/a:b"),
            spec: StrategySpec::parse("sabre:codec=lz4").expect("spec"),
            run: RunOptions {
                input: 1,
                timeout: Duration::from_secs(3),
            },
        };
        let json = serde_json::to_string(&args).expect("json");
        assert_eq!(
            serde_json::from_str::<WorkerArgs>(&json).expect("back"),
            args
        );
        let reply = serde_json::to_string(&WorkerReply::Err("boom".into())).expect("json");
        assert!(matches!(
            serde_json::from_str::<WorkerReply>(&reply),
            Ok(WorkerReply::Err(e)) if e == "boom"
        ));
    }
}
