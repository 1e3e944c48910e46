//! Booted by Firecracker: the mailbox fields our VMM would write, read from the Linux boot
//! parameters instead (at ring 3, natively, right after the ring-0 stub of [`crate::boot`]).
//!
//! - `mem_bytes`, `low_mem_bytes`: from the e820 table's usable RAM entries: the low region
//!   ends where the last entry below 4 GiB ends, and the rest is the high region, which
//!   must start at [`HIGH_MEM_BASE`] and have no holes (Firecracker's layout). The page
//!   directories for the high region are written here, at ring 3 (see [`map_high_memory`]).
//! - `function`: the `snapbpf.function=<index>` token of the kernel command line;
//!   `function_arg`: its `snapbpf.arg=<n>` token, 0 if absent.
//! - `heap_start`: the page-aligned end of the image (`__image_end`, as our VMM computes it
//!   from the ELF's segments).
//! - `transport`: [`TRANSPORT_SERIAL`]; fresh-allocation hints off (an unmodified
//!   Firecracker cannot act on them).

use snapbpf_guest_abi::serial::{CMDLINE_ARG, CMDLINE_FUNCTION};
use snapbpf_guest_abi::{
    Mailbox, RamLayout, ABI_VERSION, HIGH_MEM_BASE, HIGH_PD_GPA, MAILBOX_GPA, MAILBOX_MAGIC,
    PAGE_DIRS, PAGE_SIZE, PDPT_GPA, TRANSPORT_SERIAL,
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

/// Where guest RAM lies, from the e820 table's usable RAM entries.
fn ram_layout(params: u64) -> RamLayout {
    let entries = read::<u8>(params + E820_ENTRIES).min(E820_MAX);
    let (mut low_end, mut high_end) = (0u64, HIGH_MEM_BASE);
    for i in 0..u64::from(entries) {
        let entry = params + E820_TABLE + i * E820_ENTRY_BYTES;
        let (addr, size, kind) = (
            read::<u64>(entry),
            read::<u64>(entry + 8),
            read::<u32>(entry + 16),
        );
        if kind != E820_RAM || size == 0 {
            continue;
        }
        let end = addr.saturating_add(size);
        if end <= HIGH_MEM_BASE {
            low_end = low_end.max(end);
        } else if addr == high_end {
            high_end = end;
        } else {
            panic_message(format_args!(
                "e820 RAM at {addr:#x}+{size:#x} is not where this guest expects RAM"
            ));
        }
    }
    let mem = low_end + (high_end - HIGH_MEM_BASE);
    match RamLayout::new(mem, low_end) {
        Some(layout) if low_end > 0 => layout,
        _ => panic_message(format_args!(
            "guest RAM of {mem:#x} bytes ({low_end:#x} low) does not fit the layout"
        )),
    }
}

/// Writes the page directories for the high RAM region and links them into the PDPT, as
/// our VMM does before boot. This runs at ring 3 (natively): the tables are
/// identity-mapped user pages, and entries only change from not present to present,
/// which needs no TLB invalidation (the CPU caches no not-present entry).
fn map_high_memory(ram: RamLayout) {
    const TABLE: u64 = 0x7;
    const HUGE: u64 = 0x80;
    let dirs = ram.high_bytes().div_ceil(1 << 30);
    for dir in 0..dirs {
        let pd = HIGH_PD_GPA + dir * PAGE_SIZE;
        for i in 0..512u64 {
            let phys = HIGH_MEM_BASE + (dir << 30) + (i << 21);
            // SAFETY: the directory page lies in the low RAM reserved for it (guest-abi's
            // map), identity-mapped and writable at ring 3; nothing else uses it.
            unsafe { core::ptr::write_volatile((pd + i * 8) as *mut u64, phys | TABLE | HUGE) };
        }
        // SAFETY: PDPT entry PAGE_DIRS + dir (< 512, guest-abi asserts) in our PDPT page,
        // identity-mapped and writable; written after its directory is complete.
        unsafe {
            core::ptr::write_volatile((PDPT_GPA + (PAGE_DIRS + dir) * 8) as *mut u64, pd | TABLE)
        };
    }
}

/// Calls `parse` with the kernel command line's bytes (which lie in our stack area: they
/// are only valid until the stack grows that far, so no reference outlives the call).
fn with_command_line<R>(params: u64, parse: impl FnOnce(&[u8]) -> R) -> R {
    let ptr = u64::from(read::<u32>(params + CMD_LINE_PTR));
    let max = read::<u32>(params + CMDLINE_SIZE).min(CMDLINE_MAX);
    if ptr == 0 {
        panic_message(format_args!("Firecracker passed no kernel command line"));
    }
    let mut len = 0usize;
    while (len as u32) < max && read::<u8>(ptr + len as u64) != 0 {
        len += 1;
    }
    // SAFETY: [ptr, ptr + len) was read byte by byte above: guest RAM below 1 MiB, which
    // nothing writes during the call (the stack has not grown that far).
    parse(unsafe { core::slice::from_raw_parts(ptr as *const u8, len) })
}

/// The value of the `key` token on the command line, parsed, if the token is there.
fn token<T: core::str::FromStr>(line: &[u8], key: &str) -> Option<T> {
    let digits = line
        .split(|&b| b == b' ')
        .find_map(|t| t.strip_prefix(key.as_bytes()))?;
    match core::str::from_utf8(digits).ok().and_then(|d| d.parse::<T>().ok()) {
        Some(value) => Some(value),
        None => panic_message(format_args!("bad `{key}` value on the kernel command line")),
    }
}

/// Writes the mailbox's boot fields from Firecracker's boot parameters at `params`.
pub fn init_mailbox(params: u64) {
    crate::transport::select(TRANSPORT_SERIAL);
    let ram = ram_layout(params);
    let (function, function_arg) = with_command_line(params, |line| {
        (
            token::<u32>(line, CMDLINE_FUNCTION),
            token::<u64>(line, CMDLINE_ARG).unwrap_or(0),
        )
    });
    let Some(function) = function else {
        panic_message(format_args!(
            "no `{CMDLINE_FUNCTION}<index>` on the kernel command line"
        ));
    };
    map_high_memory(ram);
    let heap_start = crate::boot::image_end();
    let mb = MAILBOX_GPA as *mut Mailbox;
    // SAFETY: the mailbox page is identity-mapped guest RAM that only this runtime uses
    // (Firecracker pointed its boot stack there but never used it); nothing reads it yet.
    unsafe {
        core::ptr::write_volatile(&raw mut (*mb).magic, MAILBOX_MAGIC);
        core::ptr::write_volatile(&raw mut (*mb).abi_version, ABI_VERSION);
        core::ptr::write_volatile(&raw mut (*mb).function, function);
        core::ptr::write_volatile(&raw mut (*mb).mem_bytes, ram.mem_bytes());
        core::ptr::write_volatile(&raw mut (*mb).low_mem_bytes, ram.low_bytes());
        core::ptr::write_volatile(&raw mut (*mb).function_arg, function_arg);
        core::ptr::write_volatile(&raw mut (*mb).heap_start, heap_start);
        core::ptr::write_volatile(&raw mut (*mb).input, 0);
        core::ptr::write_volatile(&raw mut (*mb).hints_enabled, 0);
        core::ptr::write_volatile(&raw mut (*mb).transport, TRANSPORT_SERIAL);
    }
}
