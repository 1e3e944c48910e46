//! Which Firecracker binary, and its version.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long `firecracker --version` may take.
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);

/// A Firecracker binary that answered `--version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binary {
    path: PathBuf,
    version: String,
}

/// Errors finding a Firecracker binary.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// No binary was named and none is on `PATH`.
    #[error("no Firecracker binary: pass --firecracker PATH, set $FIRECRACKER, or put `firecracker` on PATH")]
    NotFound,
    /// The binary named does not exist or is not an executable file.
    #[error("Firecracker binary {path} ({how}) is not an executable file")]
    NotExecutable {
        /// The path.
        path: PathBuf,
        /// Where the path came from.
        how: &'static str,
    },
    /// `--version` could not be run.
    #[error("cannot run {path} --version: {source}")]
    Run {
        /// The binary.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `--version` did not finish in time.
    #[error("{path} --version did not finish within {VERSION_TIMEOUT:?}")]
    Hung {
        /// The binary.
        path: PathBuf,
    },
    /// `--version` failed or printed something that is not Firecracker's version.
    #[error("{path} --version is not Firecracker's ({status}): first line {line:?}")]
    NotFirecracker {
        /// The binary.
        path: PathBuf,
        /// How `--version` ended.
        status: std::process::ExitStatus,
        /// The first line it printed.
        line: String,
    },
}

fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

impl Binary {
    /// `explicit`, else `$FIRECRACKER`, else `firecracker` on `PATH`; runs `--version`
    /// (its first line, e.g. "Firecracker v1.16.1").
    pub fn locate(explicit: Option<&Path>) -> Result<Binary, LocateError> {
        let env = std::env::var_os("FIRECRACKER").filter(|v| !v.is_empty());
        let (path, how) = match (explicit, env) {
            (Some(p), _) => (p.to_path_buf(), "--firecracker"),
            (None, Some(p)) => (PathBuf::from(p), "$FIRECRACKER"),
            (None, None) => (
                Self::on_path("firecracker").ok_or(LocateError::NotFound)?,
                "PATH",
            ),
        };
        if !is_executable_file(&path) {
            return Err(LocateError::NotExecutable { path, how });
        }
        let version = Self::version_of(&path)?;
        Ok(Binary { path, version })
    }

    /// The first executable `name` in the directories of `PATH`.
    fn on_path(name: &str) -> Option<PathBuf> {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .filter(|dir| dir.is_absolute())
            .map(|dir| dir.join(name))
            .find(|p| is_executable_file(p))
    }

    /// Runs `path --version` (bounded) and returns its first line.
    fn version_of(path: &Path) -> Result<String, LocateError> {
        use std::io::Read;
        use std::process::{Command, Stdio};
        let run = |source| LocateError::Run {
            path: path.to_path_buf(),
            source,
        };
        let mut child = Command::new(path)
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(run)?;
        let deadline = Instant::now() + VERSION_TIMEOUT;
        let status = loop {
            match child.try_wait().map_err(run)? {
                Some(status) => break status,
                None if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(LocateError::Hung {
                        path: path.to_path_buf(),
                    });
                }
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        let mut out = Vec::new();
        if let Some(mut stdout) = child.stdout.take() {
            // The process has exited: this read ends at the pipe's end.
            stdout.read_to_end(&mut out).map_err(run)?;
        }
        let text = String::from_utf8_lossy(&out);
        let line = text.lines().next().unwrap_or_default().trim().to_string();
        if !status.success() || !line.starts_with("Firecracker v") {
            return Err(LocateError::NotFirecracker {
                path: path.to_path_buf(),
                status,
                line,
            });
        }
        Ok(line)
    }

    /// The binary's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its version: the first line of `--version`, e.g. "Firecracker v1.16.1".
    pub fn version(&self) -> &str {
        &self.version
    }
}
