//! Process plumbing: a pidfd to wait for and signal one child without pid-reuse races,
//! and a bounded `poll(2)` over a descriptor and that pidfd.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Instant;

/// A pidfd (`pidfd_open(2)`): readable once the process has exited; signals sent through
/// it reach that process or nobody.
#[derive(Debug)]
pub(crate) struct PidFd(OwnedFd);

impl PidFd {
    /// Opens a pidfd for `pid` (one of our unreaped children, so the pid is still its).
    pub(crate) fn open(pid: u32) -> std::io::Result<Self> {
        let pid = libc::pid_t::try_from(pid).map_err(std::io::Error::other)?;
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = i32::try_from(fd).map_err(std::io::Error::other)?;
        // SAFETY: the kernel just gave us this descriptor; nobody else owns it.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// The descriptor, for polling.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.0.as_fd()
    }

    /// Sends SIGKILL to the process (nothing if it has already been reaped).
    pub(crate) fn kill(&self) {
        // SAFETY: pidfd_send_signal on our pidfd with no siginfo; it signals that process
        // or fails.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
    }

    /// Whether the process has exited (without reaping it).
    pub(crate) fn exited(&self) -> bool {
        matches!(poll_ready(&[self.fd()], Instant::now()), Ok(Some(0)))
    }
}

/// Waits until one of `fds` is readable (or hung up) or `deadline` passes: the index of
/// the first ready one, or `None` at the deadline.
pub(crate) fn poll_ready(
    fds: &[BorrowedFd<'_>],
    deadline: Instant,
) -> std::io::Result<Option<usize>> {
    let mut polled: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        let ms = deadline
            .saturating_duration_since(Instant::now())
            .as_micros()
            .div_ceil(1000)
            .min(i32::MAX as u128) as i32;
        // SAFETY: `polled` is a valid array of pollfds for the call's duration.
        let rc = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, ms) };
        if rc > 0 {
            return Ok(polled.iter().position(|p| p.revents != 0));
        }
        if rc == 0 {
            if Instant::now() >= deadline {
                return Ok(None);
            }
            continue;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}
