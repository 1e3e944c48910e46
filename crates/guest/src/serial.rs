//! COM1 from ring 3 (IOPL 3): the byte transport of [`snapbpf_guest_abi::serial`].
//!
//! Every port access is a VM exit, so the transmitter's status is read once per
//! [`TRANSMIT_BURST`] bytes (a 16550A's FIFO), and the receiver's is polled with a burst of
//! `pause` between reads while no byte waits.

use core::fmt::Write;

use snapbpf_guest_abi::serial::{
    COM1_DATA, COM1_LINE_STATUS, LSR_DATA_READY, LSR_TRANSMIT_EMPTY, MAX_INPUT_LINE, MAX_TEXT,
    TRANSMIT_BURST,
};

/// `pause` instructions between two line-status reads while waiting for input.
const POLL_PAUSES: u32 = 64;

fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: a port read; IOPL 3 allows it at ring 3, and the port is the VMM's UART.
    // It touches no memory.
    unsafe {
        core::arch::asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    };
    value
}

fn outb(port: u16, value: u8) {
    // SAFETY: as in inb, a port write.
    unsafe {
        core::arch::asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

fn pause(n: u32) {
    for _ in 0..n {
        core::hint::spin_loop();
    }
}

/// Writes raw bytes: waits for an empty transmitter, then sends up to a FIFO's worth.
pub fn write_bytes(bytes: &[u8]) {
    for burst in bytes.chunks(TRANSMIT_BURST) {
        while inb(COM1_LINE_STATUS) & LSR_TRANSMIT_EMPTY == 0 {
            pause(POLL_PAUSES);
        }
        for &b in burst {
            outb(COM1_DATA, b);
        }
    }
}

/// One outgoing line, built whole so it leaves in as few status reads as possible.
struct Line {
    buf: [u8; LINE_BYTES],
    len: usize,
    /// Bytes the line may hold before its `\n`.
    limit: usize,
    /// Turn control characters into spaces (free text).
    escape: bool,
}

/// Room for a prefix, [`MAX_TEXT`] bytes of text and the newline.
const LINE_BYTES: usize = MAX_TEXT + 32;

impl Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.limit {
                return Err(core::fmt::Error);
            }
            self.buf[self.len] = if self.escape && (b < 0x20 || b == 0x7f) {
                b' '
            } else {
                b
            };
            self.len += 1;
        }
        Ok(())
    }
}

impl Line {
    fn send(mut self) {
        self.buf[self.len] = b'\n';
        write_bytes(&self.buf[..=self.len]);
    }
}

/// Sends `prefix`, a space and the free text `args` as one line: control characters
/// become spaces and the text is cut at [`MAX_TEXT`] bytes.
pub fn write_text_line(prefix: &str, args: core::fmt::Arguments) {
    let mut line = Line {
        buf: [0; LINE_BYTES],
        len: 0,
        limit: LINE_BYTES - 1,
        escape: false,
    };
    let _ = line.write_str(prefix);
    let _ = line.write_str(" ");
    line.escape = true;
    line.limit = line.len + MAX_TEXT;
    let _ = line.write_fmt(args);
    line.send();
}

/// Sends one line of the protocol's own fields (`args` holds no newline).
pub fn write_line(args: core::fmt::Arguments) {
    let mut line = Line {
        buf: [0; LINE_BYTES],
        len: 0,
        limit: LINE_BYTES - 1,
        escape: true,
    };
    let _ = line.write_fmt(args);
    line.send();
}

fn read_byte() -> u8 {
    while inb(COM1_LINE_STATUS) & LSR_DATA_READY == 0 {
        pause(POLL_PAUSES);
    }
    inb(COM1_DATA)
}

/// A line read from the host, without its `\n` (and without `\r`).
pub struct InputLine {
    buf: [u8; MAX_INPUT_LINE],
    len: usize,
    /// More than [`MAX_INPUT_LINE`] bytes came before the newline (the rest was dropped).
    pub overflow: bool,
}

impl InputLine {
    /// The line's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Reads the next line from the host, waiting as long as it takes.
pub fn read_line() -> InputLine {
    let mut line = InputLine {
        buf: [0; MAX_INPUT_LINE],
        len: 0,
        overflow: false,
    };
    loop {
        match read_byte() {
            b'\n' => return line,
            b'\r' => {}
            b if line.len < MAX_INPUT_LINE => {
                line.buf[line.len] = b;
                line.len += 1;
            }
            _ => line.overflow = true,
        }
    }
}
