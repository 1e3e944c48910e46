//! How the guest reports to its VMM, chosen once at boot from [`Mailbox::transport`]:
//! hypercalls to snapbpf's VMM, or the serial line protocol
//! ([`snapbpf_guest_abi::serial`]) to an unmodified Firecracker. The invocation loop calls
//! only this module, so it is the same code under both.
//!
//! [`Mailbox::transport`]: snapbpf_guest_abi::Mailbox::transport

use core::sync::atomic::{AtomicBool, Ordering};

use snapbpf_guest_abi::serial::{
    BAD_LINE, CHECKSUM_DIGITS, CONSOLE, DONE, INPUT, KEY_ABI, KEY_CHECKSUM, KEY_CYCLES,
    KEY_FUNCTION, KEY_INVOCATIONS, PANIC, READY,
};
use snapbpf_guest_abi::{Mailbox, ABI_VERSION, MAILBOX_GPA, TRANSPORT_HYPERCALL, TRANSPORT_SERIAL};

use crate::{hypercall, serial};

/// Whether the serial transport was selected (else hypercalls, the default).
static SERIAL: AtomicBool = AtomicBool::new(false);

fn serial() -> bool {
    SERIAL.load(Ordering::Relaxed)
}

/// Selects the transport named by a [`Mailbox::transport`] value.
///
/// [`Mailbox::transport`]: snapbpf_guest_abi::Mailbox::transport
pub fn select(transport: u32) {
    match transport {
        TRANSPORT_HYPERCALL => SERIAL.store(false, Ordering::Relaxed),
        TRANSPORT_SERIAL => SERIAL.store(true, Ordering::Relaxed),
        other => panic_message(format_args!("unknown transport {other} in the mailbox")),
    }
}

/// Reports the end of the init phase (the snapshot point) for `function`.
pub fn ready(function: u32) {
    if serial() {
        serial::write_line(format_args!(
            "{READY} {KEY_ABI}{ABI_VERSION} {KEY_FUNCTION}{function}"
        ));
    } else {
        hypercall::ready();
    }
}

/// Waits for the next invocation's input.
///
/// Hypercalls: the VMM wrote it into the mailbox before resuming us. Serial: the host
/// sends `input <n>`; the guest records it in the mailbox too, as the VMM would have.
pub fn next_input() -> u32 {
    let mb = MAILBOX_GPA as *mut Mailbox;
    if serial() {
        let input = loop {
            let line = serial::read_line();
            match parse_input(line.bytes()).filter(|_| !line.overflow) {
                Some(n) => break n,
                None => serial::write_text_line(
                    CONSOLE,
                    format_args!("{BAD_LINE}: {}", Escaped(line.bytes())),
                ),
            }
        };
        // SAFETY: the mailbox page is identity-mapped guest RAM; no VMM writes it under
        // the serial transport.
        unsafe { core::ptr::write_volatile(&raw mut (*mb).input, input) };
        input
    } else {
        // SAFETY: the VMM writes `input` only while we are stopped in a hypercall.
        unsafe { core::ptr::read_volatile(&raw const (*mb).input) }
    }
}

/// `input <n>` -> n.
fn parse_input(line: &[u8]) -> Option<u32> {
    let rest = line.strip_prefix(INPUT.as_bytes())?.strip_prefix(b" ")?;
    let digits = core::str::from_utf8(rest).ok()?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Bytes shown as text (anything not printable ASCII as `?`).
struct Escaped<'a>(&'a [u8]);

impl core::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for &b in self.0 {
            let c = if (0x20..0x7f).contains(&b) { b as char } else { '?' };
            core::fmt::Write::write_char(f, c)?;
        }
        Ok(())
    }
}

/// Reports an invocation: its checksum, the invocations completed so far, its cycles.
pub fn done(checksum: u64, invocations: u64, cycles: u64) {
    if serial() {
        serial::write_line(format_args!(
            "{DONE} {KEY_CHECKSUM}{checksum:0width$x} {KEY_INVOCATIONS}{invocations} {KEY_CYCLES}{cycles}",
            width = CHECKSUM_DIGITS
        ));
    } else {
        hypercall::done(checksum);
    }
}

/// Prints a line on the VMM's console.
#[allow(dead_code)]
pub fn print(args: core::fmt::Arguments) {
    if serial() {
        serial::write_text_line(CONSOLE, args);
    } else {
        hypercall::print(args);
    }
}

/// Reports a fatal error and never returns.
pub fn panic_message(args: core::fmt::Arguments) -> ! {
    if serial() {
        serial::write_text_line(PANIC, args);
        loop {
            core::hint::spin_loop();
        }
    }
    hypercall::panic_message(args)
}
