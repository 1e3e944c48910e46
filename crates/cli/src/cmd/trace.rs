//! `snapbpf trace`: capture the working set of any process on one file (VMM-agnostic),
//! either a command it starts or a process already running.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use snapbpf_wss::capture::{CaptureOptions, PageCacheCapture, TraceSource};
use snapbpf_wss::workingset::WorkingSet;

/// Record which pages of FILE a process brings into the page cache: COMMAND, run to its
/// end, or a running process (`--pid`), until it exits, `--duration` passes or SIGINT.
///
/// Works with any process that reads or maps FILE (a Firecracker memory file, say). For an
/// exact working set, evict FILE first (`--cold`) and have the process map it with
/// readahead off (MADV_RANDOM); otherwise readahead pages are captured too. With `--pid`
/// only that process's accesses count, including pages that were already cached (faults
/// and fault-around on its mappings are recorded too, so fault-around pages count as
/// touched). The working set is bound to FILE's content (size and tree digest, hashed with
/// direct reads after the capture, so the page cache is left as the process left it).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The file whose pages to capture.
    #[arg(long)]
    file: PathBuf,
    /// Where to write the working set.
    #[arg(long)]
    out: PathBuf,
    /// Evict FILE from the page cache before tracing (pages a running process maps stay).
    #[arg(long)]
    cold: bool,
    /// Attach to this running process (a PID on this host) instead of running COMMAND.
    #[arg(long, conflicts_with = "command")]
    pid: Option<u32>,
    /// With `--pid`: stop after this many seconds (default: when the process exits or on
    /// SIGINT/SIGTERM).
    #[arg(long, requires = "pid", value_parser = parse_seconds)]
    duration: Option<Duration>,
    /// The command to run, after `--`.
    #[arg(last = true, required_unless_present = "pid")]
    command: Vec<String>,
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("'{s}' is not a positive number of seconds"))
}

pub fn run(args: Args) -> Result<()> {
    if args.cold && args.pid.is_some() {
        // A running process's mapped pages cannot be dropped; the rest can.
        let file = std::fs::File::open(&args.file)
            .with_context(|| format!("cannot open {}", args.file.display()))?;
        snapbpf_store::fsutil::drop_cached(&file)
            .with_context(|| format!("cannot evict {}", args.file.display()))?;
        let stay = snapbpf_store::fsutil::resident_pages(&file)
            .with_context(|| format!("cannot read the residency of {}", args.file.display()))?;
        if stay > 0 {
            eprintln!(
                "note: {stay} pages of {} stay cached (mapped by a running process): accesses to them are seen only as faults",
                args.file.display()
            );
        }
    } else if args.cold {
        snapbpf_store::fsutil::evict(&args.file)?;
    }
    let (captured, stopped) = match args.pid {
        Some(pid) => attach(&args, pid)?,
        None => run_command(&args)?,
    };
    let identity = snapbpf_store::verify::identify(&args.file)?;
    let ws = WorkingSet::from_capture(identity, &captured);
    ws.write_atomic(&args.out)?;
    println!(
        "captured {} pages ({:.1} MiB) in {} ranges from {} events, {} lost ({stopped}); wrote {}",
        ws.total_pages(),
        ws.total_bytes() as f64 / (1 << 20) as f64,
        ws.ranges.len(),
        captured.total_events,
        captured.lost_events,
        args.out.display()
    );
    Ok(())
}

fn run_command(args: &Args) -> Result<(snapbpf_wss::capture::CapturedPages, String)> {
    let capture = PageCacheCapture::start(&args.file)?;
    let status = Command::new(&args.command[0])
        .args(&args.command[1..])
        .status()
        .with_context(|| format!("cannot run {}", args.command[0]));
    let captured = capture.stop()?;
    let status = status?;
    if !status.success() {
        anyhow::bail!(
            "{} exited with {status}; no working set written",
            args.command[0]
        );
    }
    Ok((captured, format!("{} exited", args.command[0])))
}

/// Traces the running process `pid` until it exits, the duration passes, or a signal
/// asks to finish.
fn attach(args: &Args, pid: u32) -> Result<(snapbpf_wss::capture::CapturedPages, String)> {
    let process = open_pid(pid)?;
    let finish = snapbpf_os::interrupt::finish_on_signal();
    let opts = CaptureOptions {
        sources: vec![
            TraceSource::AddToPageCache,
            TraceSource::Fault,
            TraceSource::MapPages,
        ],
        process: Some(pid),
        ..CaptureOptions::default()
    };
    let capture = PageCacheCapture::start_with(&args.file, &opts)?;
    let started = Instant::now();
    let until = match args.duration {
        Some(d) => format!("for {:.1} s, until it exits or SIGINT", d.as_secs_f64()),
        None => "until it exits or SIGINT".into(),
    };
    eprintln!(
        "attached: tracing {} for process {pid} {until}",
        args.file.display()
    );
    let stopped = loop {
        if let Some(signal) = finish.requested() {
            break format!("stopped by signal {signal}");
        }
        if args.duration.is_some_and(|d| started.elapsed() >= d) {
            break format!("traced for {:.1} s", started.elapsed().as_secs_f64());
        }
        if exited_within(&process, Duration::from_millis(50))? {
            break format!("process {pid} exited");
        }
    };
    let captured = capture.stop()?;
    drop(finish);
    Ok((captured, stopped))
}

/// A pidfd for `pid`: readable once the process exits, and never some later process that
/// reused the number.
fn open_pid(pid: u32) -> Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).context("--pid is out of range")?;
    // SAFETY: pidfd_open takes a PID and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ESRCH) {
            anyhow::bail!("no process {pid} is running");
        }
        return Err(err).context(format!("cannot watch process {pid} (pidfd_open)"));
    }
    // SAFETY: `fd` is a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Whether the process behind `pidfd` exits within `wait`.
fn exited_within(pidfd: &OwnedFd, wait: Duration) -> Result<bool> {
    let mut fds = [libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: `fds` is a valid array of one pollfd for the call's duration.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), 1, wait.as_millis() as i32) };
    if rc < 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() == std::io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(err).context("cannot watch the traced process");
    }
    Ok(rc > 0)
}
