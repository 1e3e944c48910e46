//! The guest's serial port, seen from the host: Firecracker's stdin (what the guest reads
//! from COM1) and stdout (what it writes there).

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{ChildStdin, ChildStdout};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::process::{poll_ready, PidFd};
use crate::LogTail;

/// Longest line [`Serial::read_line`] accepts, without its `\n`.
pub const MAX_LINE: usize = 64 << 10;
/// How long a line may wait for room in Firecracker's stdin.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for the exit status once Firecracker's stdout has closed.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// Errors on the serial port.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// Writing to Firecracker's stdin failed.
    #[error("cannot write to the guest's serial port (Firecracker's stdin): {source}{log}")]
    Write {
        /// The OS error.
        source: std::io::Error,
        /// The last line of Firecracker's log.
        log: LogTail,
    },
    /// Reading Firecracker's stdout failed.
    #[error("cannot read the guest's serial port (Firecracker's stdout): {source}{log}")]
    Read {
        /// The OS error.
        source: std::io::Error,
        /// The last line of Firecracker's log.
        log: LogTail,
    },
    /// No complete line came by the deadline.
    #[error("no line from the guest within {waited:?} (partial line {partial:?}){log}")]
    Timeout {
        /// How long the call waited.
        waited: Duration,
        /// What had arrived of the line.
        partial: String,
        /// The last line of Firecracker's log.
        log: LogTail,
    },
    /// Firecracker exited (or closed its stdout) while a line was awaited.
    #[error("Firecracker {how} while waiting for the guest's next line{log}")]
    Exited {
        /// How it ended ("was killed by signal 9", "exited with status 1", "closed its
        /// stdout").
        how: String,
        /// The last line of Firecracker's log.
        log: LogTail,
    },
    /// A line longer than [`MAX_LINE`].
    #[error("the guest wrote more than {MAX_LINE} bytes without a newline")]
    TooLong,
    /// The line to write holds a newline.
    #[error("a serial line must not contain a newline: {0:?}")]
    Newline(String),
}

/// The guest's serial port: [`Serial::write_line`] to its input, [`Serial::read_line`]
/// from its output.
#[derive(Debug)]
pub struct Serial {
    stdin: ChildStdin,
    stdout: ChildStdout,
    /// Bytes read past the last line returned.
    pending: Vec<u8>,
    /// Set once stdout reached its end.
    eof: bool,
    pidfd: Arc<PidFd>,
    log: PathBuf,
}

impl Serial {
    pub(crate) fn new(
        stdin: ChildStdin,
        stdout: ChildStdout,
        pidfd: Arc<PidFd>,
        log: PathBuf,
    ) -> std::io::Result<Self> {
        set_nonblocking(&stdin)?;
        set_nonblocking(&stdout)?;
        Ok(Self {
            stdin,
            stdout,
            pending: Vec::new(),
            eof: false,
            pidfd,
            log,
        })
    }

    fn log(&self) -> LogTail {
        LogTail(crate::vm::log_tail_of(&self.log))
    }

    /// Sends `line` and its `\n` to the guest.
    pub fn write_line(&mut self, line: &str) -> Result<(), SerialError> {
        if line.contains('\n') {
            return Err(SerialError::Newline(line.to_string()));
        }
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        let deadline = Instant::now() + WRITE_TIMEOUT;
        let mut at = 0;
        while at < bytes.len() {
            match self.stdin.write(&bytes[at..]) {
                Ok(n) => at += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(SerialError::Write {
                            source: std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                format!("no room in its input for {WRITE_TIMEOUT:?}"),
                            ),
                            log: self.log(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                    return Err(self.exited());
                }
                Err(source) => {
                    return Err(SerialError::Write {
                        source,
                        log: self.log(),
                    })
                }
            }
        }
        Ok(())
    }

    /// The next line from the guest (without `\n`), by `deadline`; lines of at most
    /// [`MAX_LINE`] bytes.
    pub fn read_line(&mut self, deadline: Instant) -> Result<String, SerialError> {
        let started = Instant::now();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).take(end).collect();
                let mut line = String::from_utf8_lossy(&line).into_owned();
                if line.ends_with('\r') {
                    line.pop();
                }
                return Ok(line);
            }
            if self.pending.len() > MAX_LINE {
                self.pending.clear();
                return Err(SerialError::TooLong);
            }
            if self.eof {
                return Err(self.exited());
            }
            let ready = poll_ready(&[self.stdout.as_fd(), self.pidfd.fd()], deadline).map_err(
                |source| SerialError::Read {
                    source,
                    log: self.log(),
                },
            )?;
            match ready {
                None => {
                    return Err(SerialError::Timeout {
                        waited: started.elapsed(),
                        partial: String::from_utf8_lossy(&self.pending).into_owned(),
                        log: self.log(),
                    })
                }
                Some(0) => {}
                // Firecracker exited: read what it wrote before, then report.
                Some(_) => {}
            }
            match self.stdout.read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if ready == Some(1) {
                        self.eof = true;
                    }
                }
                Err(source) => {
                    return Err(SerialError::Read {
                        source,
                        log: self.log(),
                    })
                }
            }
        }
    }

    /// The error for a Firecracker whose stdout closed or which exited.
    fn exited(&self) -> SerialError {
        // Its stdout closes as it exits: give the exit a moment to become visible.
        let deadline = Instant::now() + EXIT_GRACE;
        let _ = poll_ready(&[self.pidfd.fd()], deadline);
        SerialError::Exited {
            how: crate::vm::describe_exit(&self.pidfd),
            log: self.log(),
        }
    }
}

fn set_nonblocking(fd: &impl std::os::fd::AsRawFd) -> std::io::Result<()> {
    // SAFETY: F_GETFL on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: F_SETFL on a descriptor we own, adding O_NONBLOCK.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
