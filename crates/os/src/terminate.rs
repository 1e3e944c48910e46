//! Ending the process from library code, on the front-end's terms.
//!
//! Library code never decides to exit. Two places cannot avoid ending the process: the
//! interrupt thread once it has undone what was in flight, and a page-fault handler that
//! can no longer serve a vCPU which will not stop (ending the process is the only step
//! left that hands the guest no wrong page). They call [`terminate`], which runs the hook
//! the front-end installed with [`set_hook`] (the CLI's prints nothing more and exits with
//! the code). Without a hook the process aborts: a library embedded elsewhere never exits
//! with a status its host did not choose.

use std::sync::OnceLock;

/// What the front-end does to end the process with an exit code.
pub type Hook = fn(i32) -> !;

static HOOK: OnceLock<Hook> = OnceLock::new();

/// Installs the front-end's way of ending the process. The first call wins.
pub fn set_hook(hook: Hook) {
    let _ = HOOK.set(hook);
}

/// Ends the process with `code` through the front-end's hook (see the module docs).
pub fn terminate(code: i32) -> ! {
    match HOOK.get() {
        Some(hook) => hook(code),
        None => std::process::abort(),
    }
}

/// Makes the child `command` starts die (SIGKILL) when this process does: a VM or VMM
/// whose launcher was killed must not run on, unowned, with its directory lock released
/// under it. Set in the child between fork and exec; a launcher that died before that is
/// caught by the parent-pid check.
pub fn die_with_parent(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    let die_with_us = move || {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // We may have died between fork and prctl: then nobody would kill it.
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } as u32 != parent {
            // SAFETY: raise with a valid signal number.
            unsafe { libc::raise(libc::SIGKILL) };
        }
        Ok(())
    };
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (prctl, getppid, raise); it allocates nothing.
    unsafe { command.pre_exec(die_with_us) };
}

/// A process held by a pidfd: signalled as the process it was opened on, never as
/// another that reused its pid.
#[derive(Debug)]
pub struct ProcessHandle(std::os::fd::OwnedFd);

impl ProcessHandle {
    /// A handle on the process `pid` (`pidfd_open`).
    pub fn open(pid: i32) -> std::io::Result<Self> {
        use std::os::fd::FromRawFd;
        if pid <= 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("no process id ({pid}): the peer is in another pid namespace"),
            ));
        }
        // SAFETY: pidfd_open with a pid and no flags returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a descriptor the kernel just returned to us and nothing else owns.
        Ok(Self(unsafe {
            std::os::fd::OwnedFd::from_raw_fd(fd as std::os::fd::RawFd)
        }))
    }

    /// Sends SIGKILL to the process (no-op if it has ended).
    pub fn kill(&self) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: pidfd_send_signal on a pidfd we own, with no siginfo and no flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ESRCH) {
                return Ok(());
            }
            return Err(e);
        }
        Ok(())
    }
}
