//! Booted by Firecracker: the mailbox fields our VMM would write, read from the Linux boot
//! parameters instead (at ring 3, natively, right after the ring-0 stub of [`crate::boot`]).
//!
//! - `mem_bytes`: the end of the last usable RAM entry of the e820 table.
//! - `function`: the `snapbpf.function=<index>` token of the kernel command line.
//! - `heap_start`: the page-aligned end of the image (`__image_end`, as our VMM computes it
//!   from the ELF's segments).
//! - `transport`: [`TRANSPORT_SERIAL`]; fresh-allocation hints off (an unmodified
//!   Firecracker cannot act on them).

use snapbpf_guest_abi::serial::CMDLINE_FUNCTION;
use snapbpf_guest_abi::{
    Mailbox, ABI_VERSION, MAILBOX_GPA, MAILBOX_MAGIC, MAX_MEM_BYTES, TRANSPORT_SERIAL,
};

use crate::transport::panic_message;

/// Linux boot protocol (`arch/x86/include/uapi/asm/bootparam.h`): number of e820 entries.
const E820_ENTRIES: u64 = 0x1e8;
/// The setup header's `cmd_line_ptr` (32-bit physical address of the command line).
const CMD_LINE_PTR: u64 = 0x228;
/// The setup header's `cmdline_size` (the command line's maximum length).
const CMDLINE_SIZE: u64 = 0x238;
/// The e820 table: entries of 20 packed bytes (address u64, size u64, type u32).
const E820_TABLE: u64 = 0x2d0;
const E820_ENTRY_BYTES: u64 = 20;
/// Capacity of the table in `boot_params`.
const E820_MAX: u8 = 128;
/// e820 type of usable RAM.
const E820_RAM: u32 = 1;
/// Longest command line read (Firecracker's `CMDLINE_MAX_SIZE`).
const CMDLINE_MAX: u32 = 2048;

fn read<T: Copy>(addr: u64) -> T {
    // SAFETY: callers pass addresses inside the boot parameters page or the command line
    // Firecracker wrote, which lie in guest RAM below 1 MiB, identity-mapped with the user
    // bit by our page tables; the fields are packed, so read unaligned.
    unsafe { core::ptr::read_unaligned(addr as *const T) }
}

/// Bytes of guest RAM: the end of the highest usable e820 RAM entry.
fn mem_bytes(params: u64) -> u64 {
    let entries = read::<u8>(params + E820_ENTRIES).min(E820_MAX);
    let mut end = 0u64;
    for i in 0..u64::from(entries) {
        let entry = params + E820_TABLE + i * E820_ENTRY_BYTES;
        let (addr, size, kind) = (
            read::<u64>(entry),
            read::<u64>(entry + 8),
            read::<u32>(entry + 16),
        );
        if kind == E820_RAM {
            end = end.max(addr.saturating_add(size));
        }
    }
    end
}

/// The function index from the kernel command line.
fn function(params: u64) -> u32 {
    let ptr = u64::from(read::<u32>(params + CMD_LINE_PTR));
    let max = read::<u32>(params + CMDLINE_SIZE).min(CMDLINE_MAX);
    if ptr == 0 {
        panic_message(format_args!("Firecracker passed no kernel command line"));
    }
    let mut len = 0usize;
    while (len as u32) < max && read::<u8>(ptr + len as u64) != 0 {
        len += 1;
    }
    // SAFETY: [ptr, ptr + len) was read byte by byte above: guest RAM below 1 MiB.
    let line = unsafe { core::slice::from_raw_parts(ptr as *const u8, len) };
    let token = line
        .split(|&b| b == b' ')
        .find_map(|t| t.strip_prefix(CMDLINE_FUNCTION.as_bytes()));
    let Some(digits) = token else {
        panic_message(format_args!(
            "no `{CMDLINE_FUNCTION}<index>` on the kernel command line"
        ));
    };
    let parsed = core::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse::<u32>().ok());
    match parsed {
        Some(index) => index,
        None => panic_message(format_args!(
            "bad `{CMDLINE_FUNCTION}` value on the kernel command line"
        )),
    }
}

/// Writes the mailbox's boot fields from Firecracker's boot parameters at `params`.
pub fn init_mailbox(params: u64) {
    crate::transport::select(TRANSPORT_SERIAL);
    let mem = mem_bytes(params);
    if mem == 0 || mem > MAX_MEM_BYTES {
        panic_message(format_args!(
            "guest RAM ends at {mem:#x}: the layout allows 1 byte to {MAX_MEM_BYTES:#x}"
        ));
    }
    let function = function(params);
    let heap_start = crate::boot::image_end();
    let mb = MAILBOX_GPA as *mut Mailbox;
    // SAFETY: the mailbox page is identity-mapped guest RAM that only this runtime uses
    // (Firecracker pointed its boot stack there but never used it); nothing reads it yet.
    unsafe {
        core::ptr::write_volatile(&raw mut (*mb).magic, MAILBOX_MAGIC);
        core::ptr::write_volatile(&raw mut (*mb).abi_version, ABI_VERSION);
        core::ptr::write_volatile(&raw mut (*mb).function, function);
        core::ptr::write_volatile(&raw mut (*mb).mem_bytes, mem);
        core::ptr::write_volatile(&raw mut (*mb).heap_start, heap_start);
        core::ptr::write_volatile(&raw mut (*mb).input, 0);
        core::ptr::write_volatile(&raw mut (*mb).hints_enabled, 0);
        core::ptr::write_volatile(&raw mut (*mb).transport, TRANSPORT_SERIAL);
    }
}
