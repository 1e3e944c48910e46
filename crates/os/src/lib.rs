//! Host plumbing that snapbpf's mechanism crates share, with nothing of snapbpf's own in
//! it: the page-fault handler, the snapshot store and the memory store use it alike.
//!
//! - [`access`]: who may talk over a socket: explicit modes, peer checks, one live
//!   server per path, clients that check who serves them.
//! - [`unix`]: Unix sockets with bounded connects and line reads, and passing one
//!   descriptor with a message (`SCM_RIGHTS`).
//! - [`interrupt`]: what to undo when SIGINT/SIGTERM/SIGHUP cut work short.
//! - [`lock`]: shared and exclusive `flock(2)` locks on directories, and host-wide locks.
//! - [`terminate`]: how library code ends the process when nothing else is safe.
//! - [`error_chain`]: an error and its sources on one line.

pub mod access;
pub mod interrupt;
pub mod lock;
pub mod terminate;
pub mod unix;

/// An error and its sources on one line, each cause once: how the CLI, the worker
/// protocol and the page-fault handler's refusals print errors.
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
