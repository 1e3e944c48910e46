//! The snapbpf guest: a freestanding program that runs at CPL 3 under either VMM.
//!
//! Boot under snapbpf's VMM: it loads this ELF, builds page tables and the mailbox, and
//! starts `_start` at CPL 3 with `rsp` at the top of the stack. Boot under an unmodified
//! Firecracker: `_start` runs at ring 0 on Firecracker's page tables; a short stub
//! ([`boot`]) builds the same page tables and GDT our VMM would have and drops to ring 3,
//! where [`firecracker::init_mailbox`] writes the mailbox's boot fields from the boot
//! parameters and selects the serial transport.
//!
//! From there both are the same code: the runtime sets up the heap over the rest of guest
//! RAM (both regions), runs the selected function's init phase, reports ready (the snapshot point), and
//! then serves invocations forever: wait for the input, invoke, report the checksum
//! ([`transport`] says how each of those reaches the VMM).
#![no_std]
#![no_main]

extern crate alloc;

mod boot;
mod firecracker;
mod heap;
mod hypercall;
mod mem;
mod serial;
mod transport;

use snapbpf_guest_abi::{Mailbox, RamLayout, MAILBOX_GPA, MAILBOX_MAGIC};

fn mailbox() -> *mut Mailbox {
    MAILBOX_GPA as *mut Mailbox
}

/// The common ring-3 entry (see [`boot`]). `boot_params` is the guest-physical address of
/// Firecracker's boot parameters, or 0 when our VMM started us (it wrote the mailbox).
extern "C" fn guest_main(boot_params: u64) -> ! {
    if boot_params != 0 {
        firecracker::init_mailbox(boot_params);
    }
    let mb = mailbox();
    // SAFETY: the VMM (or init_mailbox above) wrote the mailbox page at MAILBOX_GPA before
    // this point; it is identity-mapped and only read here between reports, when the VMM
    // is not writing.
    let (magic, function, function_arg, heap_start, mem_bytes, low_mem_bytes, transport) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*mb).magic),
            core::ptr::read_volatile(&raw const (*mb).function),
            core::ptr::read_volatile(&raw const (*mb).function_arg),
            core::ptr::read_volatile(&raw const (*mb).heap_start),
            core::ptr::read_volatile(&raw const (*mb).mem_bytes),
            core::ptr::read_volatile(&raw const (*mb).low_mem_bytes),
            core::ptr::read_volatile(&raw const (*mb).transport),
        )
    };
    transport::select(transport);
    if magic != MAILBOX_MAGIC {
        transport::panic_message(format_args!("bad mailbox magic {magic:#x}"));
    }
    if heap_start < boot::image_end() {
        transport::panic_message(format_args!(
            "heap start {heap_start:#x} lies inside the image (ends at {:#x})",
            boot::image_end()
        ));
    }
    let Some(ram) = RamLayout::new(mem_bytes, low_mem_bytes) else {
        transport::panic_message(format_args!(
            "no RAM layout has {low_mem_bytes:#x} of {mem_bytes:#x} bytes low"
        ));
    };
    heap::init(heap_start, ram);
    let Some(mut function) = snapbpf_functions::init(function, function_arg) else {
        transport::panic_message(format_args!("unknown function index {function}"));
    };
    heap::freeze_at_snapshot();
    transport::ready(function_index(mb));
    heap::snapshot_passed();
    loop {
        let input = transport::next_input();
        let start = rdtsc();
        let checksum = function.invoke(input);
        let cycles = rdtsc().wrapping_sub(start);
        // SAFETY: as above; the VMM reads these only after the done report.
        let invocations = unsafe {
            core::ptr::write_volatile(&raw mut (*mb).result, checksum);
            let n = core::ptr::read_volatile(&raw const (*mb).invocations) + 1;
            core::ptr::write_volatile(&raw mut (*mb).invocations, n);
            n
        };
        transport::done(checksum, invocations, cycles);
    }
}

fn function_index(mb: *mut Mailbox) -> u32 {
    // SAFETY: as in guest_main: the identity-mapped mailbox page, written before boot.
    unsafe { core::ptr::read_volatile(&raw const (*mb).function) }
}

/// The time-stamp counter (allowed at CPL 3: CR4.TSD is clear).
fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc reads a counter into two registers; no memory is touched.
    unsafe {
        core::arch::asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    match info.location() {
        Some(at) => transport::panic_message(format_args!(
            "{} (at {}:{})",
            info.message(),
            at.file(),
            at.line()
        )),
        None => transport::panic_message(format_args!("{}", info.message())),
    }
}

/// The prebuilt `alloc` references an unwinding personality even though this program
/// aborts on panic; it is never called.
#[no_mangle]
extern "C" fn rust_eh_personality() {}
