//! What to undo when the process is interrupted (SIGINT, SIGTERM, SIGHUP).
//!
//! Work that leaves something behind if cut short (a multi-GB temporary snapshot
//! directory, a device's `read_ahead_kb` changed for an instant, worker processes)
//! registers how to undo it for as long as the work runs ([`on_interrupt`]); dropping the
//! returned guard unregisters it. [`install`] makes the signals run every registered undo
//! on a thread of their own, say so on one line, and end the process with 128 + the signal
//! number ([`crate::terminate`]).
//! Without [`install`], registering costs nothing and the signals keep their defaults.
//!
//! Work that ends when the user says so (`snapbpf trace --pid` until Ctrl-C) holds a
//! [`Finish`]: while it is held, the first signal is a request to finish, which the work
//! polls; a second signal interrupts as above.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, Once};

type Undo = Box<dyn Fn() + Send + Sync>;

static UNDO: Mutex<BTreeMap<u64, (&'static str, Undo)>> = Mutex::new(BTreeMap::new());
static NEXT: AtomicU64 = AtomicU64::new(0);
/// Write end of the pipe the signal handler writes the signal number to.
static PIPE: AtomicI32 = AtomicI32::new(-1);

/// Unregisters its undo when dropped (the work finished, nothing is left to undo).
#[derive(Debug)]
#[must_use = "the undo is unregistered as soon as the guard is dropped"]
pub struct Guard(u64);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(mut undo) = UNDO.lock() {
            undo.remove(&self.0);
        }
    }
}

/// Registers `undo` (described by `what`) to run if the process is interrupted before the
/// guard is dropped.
pub fn on_interrupt(what: &'static str, undo: impl Fn() + Send + Sync + 'static) -> Guard {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut all) = UNDO.lock() {
        all.insert(id, (what, Box::new(undo)));
    }
    Guard(id)
}

/// How many [`Finish`] guards are alive.
static FINISH_HOLDERS: AtomicUsize = AtomicUsize::new(0);
/// The signal that asked to finish (0: none yet).
static FINISH_REQUESTED: AtomicI32 = AtomicI32::new(0);

/// While alive, the first SIGINT, SIGTERM or SIGHUP asks the work to finish instead of
/// interrupting it (see [`Finish::requested`]); a second signal interrupts as usual.
#[derive(Debug)]
#[must_use = "signals interrupt again as soon as the guard is dropped"]
pub struct Finish(());

/// Makes the next signal a request to finish, for as long as the guard lives.
pub fn finish_on_signal() -> Finish {
    FINISH_HOLDERS.fetch_add(1, Ordering::SeqCst);
    Finish(())
}

impl Finish {
    /// The signal that asked to finish, if one came.
    pub fn requested(&self) -> Option<i32> {
        match FINISH_REQUESTED.load(Ordering::SeqCst) {
            0 => None,
            signal => Some(signal),
        }
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        FINISH_HOLDERS.fetch_sub(1, Ordering::SeqCst);
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "SIGHUP",
    }
}

extern "C" fn on_signal(signal: libc::c_int) {
    let fd = PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = signal as u8;
        // SAFETY: write(2) is async-signal-safe; one byte from a local to our pipe.
        unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
    }
}

/// Makes SIGINT, SIGTERM and SIGHUP run every registered undo and exit. Call once, early
/// in `main`; later calls do nothing.
pub fn install() -> std::io::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| result = install_once());
    result
}

fn install_once() -> std::io::Result<()> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors into our array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the read end is new and ours.
    let read = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    // SAFETY: the write end is new and ours.
    let write = unsafe { OwnedFd::from_raw_fd(fds[1]) };
    PIPE.store(write.as_raw_fd(), Ordering::Relaxed);
    // The write end lives as long as the process.
    std::mem::forget(write);
    std::thread::Builder::new()
        .name("interrupt".into())
        .spawn(move || {
            let mut byte = 0u8;
            loop {
                // SAFETY: reads one byte into a local from our pipe.
                let n = unsafe { libc::read(read.as_raw_fd(), (&mut byte as *mut u8).cast(), 1) };
                if n < 0
                    && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                {
                    continue;
                }
                if n != 1 {
                    return;
                }
                let first_request = FINISH_HOLDERS.load(Ordering::SeqCst) > 0
                    && FINISH_REQUESTED
                        .compare_exchange(0, i32::from(byte), Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok();
                if !first_request {
                    break;
                }
                let _ = writeln!(
                    std::io::stderr(),
                    "{}: finishing (send it again to abort)",
                    signal_name(i32::from(byte))
                );
            }
            let undone = undo_all();
            let name = signal_name(i32::from(byte));
            let what = if undone.is_empty() {
                "nothing to clean up".to_string()
            } else {
                format!("undid: {}", undone.join(", "))
            };
            let _ = writeln!(std::io::stderr(), "error: interrupted by {name}; {what}");
            crate::terminate::terminate(128 + i32::from(byte));
        })?;
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: sigaction is plain data; all-zero is a valid value, filled below.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_signal as *const () as usize;
        action.sa_flags = libc::SA_RESTART;
        // SAFETY: sigemptyset initialises the mask inside our struct.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: installs a handler that only calls write(2), from a filled struct.
        let rc = unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Runs and forgets every registered undo; returns what they were.
fn undo_all() -> Vec<&'static str> {
    let all = match UNDO.lock() {
        Ok(mut all) => std::mem::take(&mut *all),
        Err(_) => return Vec::new(),
    };
    all.into_values()
        .map(|(what, undo)| {
            undo();
            what
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_unregister_and_undo_runs_once() {
        use std::sync::atomic::AtomicUsize;
        use std::sync::Arc;
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        let kept = on_interrupt("test: kept", move || {
            r.fetch_add(1, Ordering::SeqCst);
        });
        let r = ran.clone();
        drop(on_interrupt("test: dropped", move || {
            r.fetch_add(100, Ordering::SeqCst);
        }));
        let undone = undo_all();
        assert!(undone.contains(&"test: kept"), "{undone:?}");
        assert!(!undone.contains(&"test: dropped"), "{undone:?}");
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        assert!(undo_all().is_empty());
        drop(kept);
    }
}
