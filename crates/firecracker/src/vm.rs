//! One Firecracker process and its API.

use std::fs::{DirBuilder, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::http::{self, HttpError};
use crate::process::PidFd;
use crate::serial::Serial;
use crate::{Binary, LogTail};

/// Where the private directories go when this user owns it (tmpfs).
const RUN_BASE: &str = "/run/snapbpf/fc";
/// How long Firecracker may take to open its API socket.
pub const SPAWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a configuration or control API call may take.
pub const API_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `PUT /snapshot/create` may take (it writes all of guest memory).
pub const CREATE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long `PUT /snapshot/load` may take (with `Uffd`, the handler's prefetch included).
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a cut connection waits to see whether Firecracker is exiting.
const EXIT_GRACE: Duration = Duration::from_millis(200);
/// Bytes of the log's end read for [`Vm::log_tail`].
const LOG_TAIL_BYTES: u64 = 16 << 10;
/// Longest fault message or log line quoted in an error.
const QUOTE_MAX: usize = 400;

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// The machine Firecracker boots.
#[derive(Debug, Clone, Copy)]
pub struct MachineConfig {
    /// Guest memory, MiB.
    pub mem_mib: u32,
    /// vCPUs (the snapbpf guest uses one).
    pub vcpus: u8,
    /// Track the pages the guest and Firecracker write (`track_dirty_pages`), so that
    /// [`Vm::create_snapshot`] writes only those: a Diff snapshot over the all-zero memory
    /// the VM booted with, which for a VM that was never restored is its whole memory, with
    /// every page never written left a hole. Without it, a Full snapshot writes every page.
    pub track_dirty_pages: bool,
}

/// How a restored VM's guest memory is backed (Firecracker's `mem_backend`).
#[derive(Debug, Clone, Copy)]
pub enum MemBackend<'a> {
    /// The snapshot's memory file, mapped privately by Firecracker (`backend_type: File`).
    File(&'a Path),
    /// A page-fault handler listening on this Unix socket, which Firecracker hands its
    /// userfaultfd (`backend_type: Uffd`).
    Uffd(&'a Path),
}

/// Errors starting a Firecracker process.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// No private directory could be made.
    #[error("cannot create a private directory for Firecracker in {base}: {source}")]
    Dir {
        /// The directory it was to be made in.
        base: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The private directory's path is too long for a Unix socket.
    #[error("Firecracker's API socket path {0} is too long for a Unix socket (set TMPDIR to a shorter directory)")]
    SocketPath(PathBuf),
    /// The log file could not be created.
    #[error("cannot create Firecracker's log {path}: {source}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The process could not be started.
    #[error("cannot start {path}: {source}")]
    Start {
        /// The binary.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The process could not be watched or its pipes set up.
    #[error("cannot set up Firecracker's process (pid {pid}): {source}")]
    Setup {
        /// Its pid.
        pid: u32,
        /// The OS error.
        source: std::io::Error,
    },
    /// The process exited before its API socket was there.
    #[error("Firecracker {how} before its API socket appeared{log}")]
    Exited {
        /// How it ended.
        how: String,
        /// The last line of its log.
        log: LogTail,
    },
    /// The API socket did not appear in time.
    #[error("Firecracker's API socket {socket} did not answer within {SPAWN_TIMEOUT:?}{log}")]
    NoSocket {
        /// The socket.
        socket: PathBuf,
        /// The last line of its log.
        log: LogTail,
    },
}

/// Errors of one API operation. `call` names the request, e.g. `PUT /snapshot/load`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A path cannot travel in the JSON body.
    #[error("Firecracker API {call}: the path {path} is not valid UTF-8")]
    Path {
        /// The request.
        call: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// A file Firecracker is to write could not be created first (mode 0600).
    #[error("Firecracker API {call}: cannot create {path} (mode 0600): {source}")]
    Prepare {
        /// The request.
        call: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("Firecracker API {call} failed: {source}{log}")]
    Http {
        /// The request.
        call: &'static str,
        /// What failed.
        source: HttpError,
        /// The last line of Firecracker's log.
        log: LogTail,
    },
    /// Firecracker answered with an error status.
    #[error("Firecracker API {call} answered HTTP {status}: {fault_message}{log}")]
    Status {
        /// The request.
        call: &'static str,
        /// The HTTP status.
        status: u16,
        /// Firecracker's `fault_message` (or the body, when it has none).
        fault_message: String,
        /// The last line of Firecracker's log.
        log: LogTail,
    },
    /// Firecracker exited during (or before) the call.
    #[error("Firecracker {how} during API {call}{log}")]
    Exited {
        /// The request.
        call: &'static str,
        /// How it ended.
        how: String,
        /// The last line of its log.
        log: LogTail,
    },
}

/// One Firecracker process: API socket in a private directory (mode 0700, created fresh
/// under `/run/snapbpf/fc` or the temporary directory, removed on drop), log file there,
/// stdin/stdout piped (the guest's serial port), stderr to the log; `PR_SET_PDEATHSIG`
/// (SIGKILL) so it dies with us; killed, reaped and cleaned up on drop and on
/// SIGINT/SIGTERM ([`snapbpf_os::interrupt`], once the front-end installed it).
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that spawned the process ends: spawn a
/// `Vm` on a thread that outlives it (the thread that drops it, typically).
///
/// Paths handed to the API are passed as given; Firecracker runs in our working directory.
#[derive(Debug)]
pub struct Vm {
    child: Option<Child>,
    pid: u32,
    pidfd: Arc<PidFd>,
    dir: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    serial: Serial,
    /// Booted with `track_dirty_pages`: snapshots are Diff snapshots.
    tracks_dirty_pages: bool,
    _interrupt: snapbpf_os::interrupt::Guard,
}

/// A base directory for private directories: `RUN_BASE` when it is a real directory of
/// ours that nobody else may write (and so is its parent), else `None`.
fn run_base() -> Option<PathBuf> {
    let base = Path::new(RUN_BASE);
    let parent = base.parent()?;
    let _ = std::fs::create_dir_all(parent);
    let _ = DirBuilder::new().mode(0o700).create(base);
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let safe = |p: &Path| {
        std::fs::symlink_metadata(p).is_ok_and(|m| {
            m.file_type().is_dir() && (m.uid() == me || m.uid() == 0) && m.mode() & 0o022 == 0
        })
    };
    (safe(parent) && safe(base)).then(|| base.to_path_buf())
}

/// Creates a fresh private directory (mode 0700): it did not exist before, so nobody else
/// put anything in it.
fn private_dir() -> Result<PathBuf, SpawnError> {
    let base = run_base().unwrap_or_else(std::env::temp_dir);
    let mut last = None;
    for _ in 0..64 {
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("vm-{}-{n}", std::process::id()));
        match DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(source) => return Err(SpawnError::Dir { base, source }),
        }
    }
    Err(SpawnError::Dir {
        base,
        source: last.unwrap_or_else(|| std::io::Error::other("no free name")),
    })
}

/// The last non-empty line of the log at `path` ("" when there is none), cut to a
/// quotable length.
pub(crate) fn log_tail_of(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)));
    let mut bytes = Vec::new();
    let _ = file.take(LOG_TAIL_BYTES).read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let line = text
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    quote(line)
}

/// `text` on one line, at most `QUOTE_MAX` characters.
fn quote(text: &str) -> String {
    let one_line: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match one_line.char_indices().nth(QUOTE_MAX) {
        Some((at, _)) => format!("{}...", &one_line[..at]),
        None => one_line,
    }
}

/// How the process behind `pidfd` ended, without reaping it.
pub(crate) fn describe_exit(pidfd: &PidFd) -> String {
    use std::os::fd::AsRawFd;
    // SAFETY: siginfo_t is plain data; all-zero is a valid value for waitid to fill.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on our pidfd writes into `info`; WNOWAIT leaves the child unreaped.
    let rc = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            pidfd.fd().as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: waitid filled `info` (or left it zeroed): reading its pid is reading plain
    // data.
    let pid = unsafe { info.si_pid() };
    if rc != 0 || pid == 0 {
        return "closed its stdout".to_string();
    }
    // SAFETY: as above, for the status of a child-exit siginfo.
    let status = unsafe { info.si_status() };
    match info.si_code {
        libc::CLD_EXITED => format!("exited with status {status}"),
        libc::CLD_KILLED | libc::CLD_DUMPED => format!("was killed by signal {status}"),
        _ => "stopped".to_string(),
    }
}

impl Vm {
    /// Starts Firecracker and waits (at most [`SPAWN_TIMEOUT`]) until its API socket
    /// answers.
    pub fn spawn(bin: &Binary) -> Result<Vm, SpawnError> {
        let dir = private_dir()?;
        let fail = |e: SpawnError| {
            let _ = std::fs::remove_dir_all(&dir);
            e
        };
        let socket = dir.join("api.sock");
        let log = dir.join("firecracker.log");
        // sockaddr_un holds 108 bytes with the terminating NUL.
        if socket.as_os_str().len() >= 108 {
            return Err(fail(SpawnError::SocketPath(socket)));
        }
        let log_file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(0o600)
            .open(&log)
            .map_err(|source| {
                fail(SpawnError::Log {
                    path: log.clone(),
                    source,
                })
            })?;
        let stderr = log_file.try_clone().map_err(|source| {
            fail(SpawnError::Log {
                path: log.clone(),
                source,
            })
        })?;
        drop(log_file);
        let mut command = Command::new(bin.path());
        command
            .arg("--api-sock")
            .arg(&socket)
            .arg("--log-path")
            .arg(&log)
            .arg("--level")
            .arg("Info")
            .arg("--no-seccomp")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            // Its own process group: a terminal's Ctrl-C reaches us, and we end it.
            .process_group(0);
        snapbpf_os::terminate::die_with_parent(&mut command);
        let mut child = command.spawn().map_err(|source| {
            fail(SpawnError::Start {
                path: bin.path().to_path_buf(),
                source,
            })
        })?;
        let pid = child.id();
        let abandon = |child: &mut Child, source: std::io::Error| {
            let _ = child.kill();
            let _ = child.wait();
            fail(SpawnError::Setup { pid, source })
        };
        let pidfd = match PidFd::open(pid) {
            Ok(p) => Arc::new(p),
            Err(e) => return Err(abandon(&mut child, e)),
        };
        let serial = match (child.stdin.take(), child.stdout.take()) {
            (Some(stdin), Some(stdout)) => Serial::new(stdin, stdout, pidfd.clone(), log.clone()),
            _ => Err(std::io::Error::other("no stdin/stdout pipes")),
        };
        let serial = match serial {
            Ok(s) => s,
            Err(e) => return Err(abandon(&mut child, e)),
        };
        let undo_pidfd = pidfd.clone();
        let undo_dir = dir.clone();
        let guard = snapbpf_os::interrupt::on_interrupt("killed Firecracker", move || {
            undo_pidfd.kill();
            let _ = std::fs::remove_dir_all(&undo_dir);
        });
        // From here on, dropping `vm` kills, reaps and cleans up.
        let vm = Vm {
            child: Some(child),
            pid,
            pidfd,
            dir,
            socket,
            log,
            serial,
            tracks_dirty_pages: false,
            _interrupt: guard,
        };
        vm.wait_for_socket()?;
        Ok(vm)
    }

    fn wait_for_socket(&self) -> Result<(), SpawnError> {
        let deadline = Instant::now() + SPAWN_TIMEOUT;
        loop {
            if self.pidfd.exited() {
                return Err(SpawnError::Exited {
                    how: describe_exit(&self.pidfd),
                    log: LogTail(self.log_tail()),
                });
            }
            if self.socket.exists() {
                let attempt = Instant::now() + Duration::from_millis(100);
                if snapbpf_os::unix::connect_within(&self.socket, attempt).is_ok() {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(SpawnError::NoSocket {
                    socket: self.socket.clone(),
                    log: LogTail(self.log_tail()),
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The private directory holding the API socket (`api.sock`) and the log
    /// (`firecracker.log`); removed when the `Vm` is dropped.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// One API request: `call` is "METHOD /path". Returns its round trip.
    fn api(
        &self,
        call: &'static str,
        body: serde_json::Value,
        timeout: Duration,
    ) -> Result<Duration, ApiError> {
        let (method, uri) = call.split_once(' ').unwrap_or(("PUT", call));
        let body = body.to_string();
        let started = Instant::now();
        if self.pidfd.exited() {
            return Err(self.exited(call));
        }
        let response = http::request(
            &self.socket,
            method,
            uri,
            body.as_bytes(),
            started + timeout,
            &self.pidfd,
        );
        let took = started.elapsed();
        let response = match response {
            Ok(r) => r,
            Err(HttpError::PeerExited) => return Err(self.exited(call)),
            Err(source) => {
                // A connection refused or cut short by a dying Firecracker: say that.
                let cut = matches!(
                    source,
                    HttpError::Closed | HttpError::Connect { .. } | HttpError::Receive(_)
                );
                if cut
                    && crate::process::poll_ready(&[self.pidfd.fd()], Instant::now() + EXIT_GRACE)
                        .is_ok_and(|r| r.is_some())
                {
                    return Err(self.exited(call));
                }
                return Err(ApiError::Http {
                    call,
                    source,
                    log: LogTail(self.log_tail()),
                });
            }
        };
        if (200..300).contains(&response.status) {
            tracing::debug!("firecracker {}: {call} took {took:?}", self.pid);
            return Ok(took);
        }
        Err(ApiError::Status {
            call,
            status: response.status,
            fault_message: fault_message(&response.body, &response.reason),
            log: LogTail(self.log_tail()),
        })
    }

    fn exited(&self, call: &'static str) -> ApiError {
        ApiError::Exited {
            call,
            how: describe_exit(&self.pidfd),
            log: LogTail(self.log_tail()),
        }
    }

    /// Boots `kernel` (an ELF) with `boot_args` on `machine`: `PUT /boot-source`,
    /// `PUT /machine-config`, `PUT /actions` (`InstanceStart`).
    pub fn boot(
        &mut self,
        kernel: &Path,
        boot_args: &str,
        machine: MachineConfig,
    ) -> Result<(), ApiError> {
        const BOOT_SOURCE: &str = "PUT /boot-source";
        let kernel = utf8(BOOT_SOURCE, kernel)?;
        self.api(
            BOOT_SOURCE,
            json!({"kernel_image_path": kernel, "boot_args": boot_args}),
            API_TIMEOUT,
        )?;
        self.api(
            "PUT /machine-config",
            json!({
                "vcpu_count": machine.vcpus,
                "mem_size_mib": machine.mem_mib,
                "track_dirty_pages": machine.track_dirty_pages,
            }),
            API_TIMEOUT,
        )?;
        self.api(
            "PUT /actions",
            json!({"action_type": "InstanceStart"}),
            API_TIMEOUT,
        )?;
        self.tracks_dirty_pages = machine.track_dirty_pages;
        Ok(())
    }

    /// Pauses the vCPUs (`PATCH /vm`).
    pub fn pause(&mut self) -> Result<(), ApiError> {
        self.api("PATCH /vm", json!({"state": "Paused"}), API_TIMEOUT)
            .map(drop)
    }

    /// Writes a snapshot of the paused VM: its state to `vmstate`, guest memory to
    /// `memory` (`PUT /snapshot/create`): Full, or Diff when the VM was booted with
    /// [`MachineConfig::track_dirty_pages`] (only written pages; the rest holes). Both files are created with mode 0600 first (a
    /// snapshot holds the tenant's memory); existing files are overwritten.
    pub fn create_snapshot(&mut self, vmstate: &Path, memory: &Path) -> Result<(), ApiError> {
        const CALL: &str = "PUT /snapshot/create";
        let (state, mem) = (utf8(CALL, vmstate)?, utf8(CALL, memory)?);
        for path in [vmstate, memory] {
            private_file(path).map_err(|source| ApiError::Prepare {
                call: CALL,
                path: path.to_path_buf(),
                source,
            })?;
        }
        self.api(
            CALL,
            json!({
                "snapshot_type": if self.tracks_dirty_pages { "Diff" } else { "Full" },
                "snapshot_path": state,
                "mem_file_path": mem,
            }),
            CREATE_TIMEOUT,
        )
        .map(drop)
    }

    /// Loads a snapshot into this (fresh) process and resumes it (`PUT /snapshot/load`
    /// with `resume_vm`); returns the API round trip.
    pub fn load_snapshot(
        &mut self,
        vmstate: &Path,
        backend: MemBackend<'_>,
    ) -> Result<Duration, ApiError> {
        const CALL: &str = "PUT /snapshot/load";
        let state = utf8(CALL, vmstate)?;
        let (kind, path) = match backend {
            MemBackend::File(p) => ("File", p),
            MemBackend::Uffd(p) => ("Uffd", p),
        };
        let path = utf8(CALL, path)?;
        self.api(
            CALL,
            json!({
                "snapshot_path": state,
                "mem_backend": {"backend_type": kind, "backend_path": path},
                "resume_vm": true,
            }),
            LOAD_TIMEOUT,
        )
    }

    /// The guest's serial port.
    pub fn serial(&mut self) -> &mut Serial {
        &mut self.serial
    }

    /// The last non-empty line of Firecracker's log (for errors).
    pub fn log_tail(&self) -> String {
        log_tail_of(&self.log)
    }

    /// RssAnon and RssFile of the Firecracker process, KiB (what the VM holds).
    pub fn rss_kib(&self) -> std::io::Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("no {name} in /proc/{}/status", self.pid),
                    )
                })
        };
        Ok((field("RssAnon:")?, field("RssFile:")?))
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.pidfd.kill();
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn utf8<'p>(call: &'static str, path: &'p Path) -> Result<&'p str, ApiError> {
    path.to_str().ok_or_else(|| ApiError::Path {
        call,
        path: path.to_path_buf(),
    })
}

/// Creates `path` if absent and makes it mode 0600, without following a symlink there.
fn private_file(path: &Path) -> std::io::Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
}

/// Firecracker's `fault_message`, else the body as text, else the reason phrase.
fn fault_message(body: &[u8], reason: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Fault {
        fault_message: String,
    }
    if let Ok(fault) = serde_json::from_slice::<Fault>(body) {
        return quote(&fault.fault_message);
    }
    let text = quote(&String::from_utf8_lossy(body));
    match (text.is_empty(), reason.is_empty()) {
        (false, _) => text,
        (true, false) => reason.to_string(),
        (true, true) => "(no fault message)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_messages_and_quotes() {
        assert_eq!(
            fault_message(
                br#"{"fault_message":"Load snapshot error:\nno file"}"#,
                "Bad Request"
            ),
            "Load snapshot error: no file"
        );
        assert_eq!(fault_message(b"", "Bad Request"), "Bad Request");
        assert_eq!(fault_message(b"oops", ""), "oops");
        assert_eq!(fault_message(b"", ""), "(no fault message)");
        let long = "x".repeat(1000);
        assert_eq!(quote(&long).len(), QUOTE_MAX + 3);
    }

    #[test]
    fn log_tails_skip_blank_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("log");
        assert_eq!(log_tail_of(&log), "");
        std::fs::write(&log, "first\nsecond line\n\n  \n").expect("write");
        assert_eq!(log_tail_of(&log), "second line");
        assert_eq!(
            LogTail(log_tail_of(&log)).to_string(),
            "; Firecracker's log: second line"
        );
        assert_eq!(LogTail::default().to_string(), "");
    }
}
