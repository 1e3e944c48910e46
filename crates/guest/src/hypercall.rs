//! Hypercalls: 8-byte writes to the hypercall page, which the VMM sees as MMIO exits.

use core::fmt::Write;
use snapbpf_guest_abi::{
    Mailbox, CONSOLE_BYTES, HC_CONSOLE, HC_DONE, HC_FRESH_HINTS, HC_PANIC, HC_READY,
    HYPERCALL_BASE, MAILBOX_GPA, MAILBOX_MAGIC,
};

fn hypercall(offset: u64, value: u64) {
    // SAFETY: the hypercall page is mapped in the guest page tables but backed by no
    // memory: the write exits to the VMM and touches no guest memory.
    unsafe { core::ptr::write_volatile((HYPERCALL_BASE + offset) as *mut u64, value) }
}

/// Reports the end of the init phase: the VMM may snapshot now.
pub fn ready() {
    hypercall(HC_READY, MAILBOX_MAGIC);
}

/// Reports the end of an invocation.
pub fn done(checksum: u64) {
    hypercall(HC_DONE, checksum);
}

/// Tells the VMM that the first `count` entries of the mailbox hint table are fresh.
pub fn fresh_hints(count: usize) {
    hypercall(HC_FRESH_HINTS, count as u64);
}

/// Writes formatted text into the mailbox console buffer; returns the length.
fn write_console(args: core::fmt::Arguments) -> usize {
    struct Console {
        len: usize,
    }
    impl Write for Console {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            let mb = MAILBOX_GPA as *mut Mailbox;
            for &b in s.as_bytes() {
                if self.len == CONSOLE_BYTES {
                    break;
                }
                // SAFETY: `len < CONSOLE_BYTES`, inside the mailbox's console array.
                unsafe {
                    core::ptr::write_volatile((&raw mut (*mb).console).cast::<u8>().add(self.len), b)
                };
                self.len += 1;
            }
            Ok(())
        }
    }
    let mut c = Console { len: 0 };
    let _ = c.write_fmt(args);
    c.len
}

/// Prints a line on the VMM's console.
#[allow(dead_code)]
pub fn print(args: core::fmt::Arguments) {
    let len = write_console(args);
    hypercall(HC_CONSOLE, len as u64);
}

/// Reports a fatal error and never returns.
pub fn panic_message(args: core::fmt::Arguments) -> ! {
    let len = write_console(args);
    loop {
        hypercall(HC_PANIC, len as u64);
    }
}
