//! The snapbpf guest: a freestanding program the VMM runs at CPL 3.
//!
//! Boot: the VMM loads this ELF, builds page tables and the mailbox, and starts `_start`
//! with `rsp` at the top of the stack. The runtime sets up the heap over the rest of guest
//! RAM, runs the selected function's init phase, reports ready (the snapshot point), and
//! then serves invocations forever: read the input from the mailbox, invoke, report the
//! checksum. Each report is one MMIO hypercall; the VMM resumes the guest for the next one.
#![no_std]
#![no_main]

extern crate alloc;

mod heap;
mod hypercall;
mod mem;

use snapbpf_guest_abi::{Mailbox, MAILBOX_GPA, MAILBOX_MAGIC};

core::arch::global_asm!(
    ".section .text._start, \"ax\"",
    ".global _start",
    "_start:",
    "    xor ebp, ebp",
    "    call {main}",
    "    ud2",
    main = sym guest_main,
);

fn mailbox() -> *mut Mailbox {
    MAILBOX_GPA as *mut Mailbox
}

extern "C" fn guest_main() -> ! {
    let mb = mailbox();
    // SAFETY: the VMM wrote the mailbox page at MAILBOX_GPA before starting us; it is
    // identity-mapped and only read here between hypercalls, when the VMM is not writing.
    let (magic, function, heap_start, mem_bytes) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*mb).magic),
            core::ptr::read_volatile(&raw const (*mb).function),
            core::ptr::read_volatile(&raw const (*mb).heap_start),
            core::ptr::read_volatile(&raw const (*mb).mem_bytes),
        )
    };
    if magic != MAILBOX_MAGIC {
        hypercall::panic_message(format_args!("bad mailbox magic {magic:#x}"));
    }
    heap::init(heap_start, mem_bytes);
    let Some(mut function) = snapbpf_functions::init(function) else {
        hypercall::panic_message(format_args!("unknown function index {function}"));
    };
    heap::freeze_at_snapshot();
    hypercall::ready();
    heap::snapshot_passed();
    loop {
        // SAFETY: as above; the VMM writes `input` only while we are stopped in a hypercall.
        let input = unsafe { core::ptr::read_volatile(&raw const (*mb).input) };
        let checksum = function.invoke(input);
        // SAFETY: as above; the VMM reads these only after the DONE hypercall.
        unsafe {
            core::ptr::write_volatile(&raw mut (*mb).result, checksum);
            let n = core::ptr::read_volatile(&raw const (*mb).invocations);
            core::ptr::write_volatile(&raw mut (*mb).invocations, n + 1);
        }
        hypercall::done(checksum);
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    match info.location() {
        Some(at) => hypercall::panic_message(format_args!(
            "{} (at {}:{})",
            info.message(),
            at.file(),
            at.line()
        )),
        None => hypercall::panic_message(format_args!("{}", info.message())),
    }
}

/// The prebuilt `alloc` references an unwinding personality even though this program
/// aborts on panic; it is never called.
#[no_mangle]
extern "C" fn rust_eh_personality() {}
