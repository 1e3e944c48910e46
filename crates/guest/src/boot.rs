//! `_start`: the entry point for both VMMs.
//!
//! - **CPL 3** (snapbpf's VMM): page tables, segments, control registers and the mailbox
//!   are already what the runtime needs; go straight to the common entry with no boot
//!   parameters.
//! - **CPL 0** (Firecracker, Linux 64-bit boot protocol: long mode on its identity tables
//!   for the first GiB without the user bit, `rsi` = boot parameters, `rsp` = 0x8ff0 inside
//!   our mailbox page). Ring-0 code is emulated on this host (about 1 µs per
//!   instruction), so the stub does only what ring 3 cannot: it switches to our stack
//!   before anything is pushed, builds exactly the page tables our VMM builds
//!   (`snapbpf-vmm` `layout::build_page_tables`: PML4, PDPT, [`PAGE_DIRS`] directories of
//!   2 MiB pages, user bit everywhere; the directories' 2048 entries are copied from a
//!   table in the image by one `rep movsq`, about 2 ms here, where computing them took
//!   four instructions each, about 8 ms), loads a GDT whose ring-3 selectors are the ones our
//!   VMM uses, sets CR0/CR4 as our VMM does (SSE usable at ring 3), loads CR3 and `iretq`s
//!   to ring 3 with RFLAGS 0x3002 (IOPL 3 for the serial port, interrupts off). Everything
//!   else (reading the boot parameters, writing the mailbox) happens at ring 3, natively,
//!   in [`crate::firecracker`].
//!
//! Firecracker's structures stay where it put them: its GDT (0x500) and page tables
//! (0x9000..0xbfff) are no longer used once CR3 and GDTR are ours, its boot parameters
//! (0x7000) lie between our page directories and the mailbox, and its command line
//! (0x20000) and ACPI tables lie in our stack, read (the command line) before the stack
//! can grow that far.

use snapbpf_guest_abi::{
    GUEST_CR0, GUEST_CR4, PAGE_DIRS, PAGE_SIZE, PDPT_GPA, PD_GPA, PML4_GPA, STACK_TOP,
    USER_CODE_SELECTOR, USER_DATA_SELECTOR,
};

/// Page-table entry bits: present, writable, user; `HUGE` maps 2 MiB in a directory.
const TABLE: u64 = 0x7;
const HUGE: u64 = 0x80;
/// 2 MiB.
const HUGE_PAGE: u64 = 1 << 21;
/// RFLAGS at ring 3: IOPL 3, interrupts disabled, the reserved bit 1.
const USER_RFLAGS: u64 = 0x3002;

core::arch::global_asm!(
    ".section .text._start, \"ax\"",
    ".global _start",
    "_start:",
    "    mov eax, cs",
    "    test al, 3",
    "    jnz 3f",
    // Ring 0, under Firecracker. Its rsp lies in our mailbox page: switch first.
    "    mov esp, {stack_top}",
    // The boot parameters stay in r8 (rsi is the copy's source below).
    "    mov r8, rsi",
    // PML4[0] -> PDPT.
    "    mov qword ptr [{pml4}], {pml4e}",
    // PDPT[0..PAGE_DIRS] -> the page directories.
    "    mov edi, {pdpt}",
    "    mov eax, {pdpte}",
    "    mov ecx, {page_dirs}",
    "5:  mov [rdi], rax",
    "    add eax, {page_size}",
    "    add edi, 8",
    "    loop 5b",
    // Every directory entry maps the next 2 MiB: copied from the image.
    "    cld",
    "    lea rsi, [rip + {table}]",
    "    mov edi, {pd}",
    "    mov ecx, {pd_entries}",
    "    rep movsq",
    "    lgdt [rip + snapbpf_gdtr]",
    "    mov eax, {cr4}",
    "    mov cr4, rax",
    "    mov eax, {cr0}",
    "    mov cr0, rax",
    "    mov eax, {pml4}",
    "    mov cr3, rax",
    "    mov eax, {udata}",
    "    mov ds, ax",
    "    mov es, ax",
    "    mov fs, ax",
    "    mov gs, ax",
    // iretq frame: ss, rsp, rflags, cs, rip. The boot parameters go in rdi, the common
    // entry's first argument.
    "    push {udata}",
    "    push {stack_top}",
    "    push {rflags}",
    "    push {ucode}",
    "    lea rax, [rip + 4f]",
    "    push rax",
    "    mov rdi, r8",
    "    iretq",
    // Ring 3, under our VMM: no boot parameters.
    "3:  xor edi, edi",
    // The common ring-3 entry.
    "4:  xor ebp, ebp",
    "    call {main}",
    "    ud2",
    // The GDT: Firecracker's ring-0 selectors (0x08 code, 0x10 data: CS holds 0x08 until
    // the iretq), then ring-3 code and data at the selectors our VMM loads. Accessed bits
    // preset so the CPU never writes here.
    ".pushsection .data.snapbpf_gdt, \"aw\"",
    ".balign 16",
    "snapbpf_gdt:",
    "    .quad 0",
    "    .quad 0x00af9b000000ffff",
    "    .quad 0x00cf93000000ffff",
    "    .quad 0x00affb000000ffff",
    "    .quad 0x00cff3000000ffff",
    "snapbpf_gdtr:",
    "    .short 5 * 8 - 1",
    "    .quad snapbpf_gdt",
    ".popsection",
    stack_top = const STACK_TOP,
    pml4 = const PML4_GPA,
    pml4e = const PDPT_GPA | TABLE,
    pdpt = const PDPT_GPA,
    pdpte = const PD_GPA | TABLE,
    page_dirs = const PAGE_DIRS,
    page_size = const PAGE_SIZE,
    pd = const PD_GPA,
    pd_entries = const PAGE_DIRS * 512,
    table = sym PAGE_DIRECTORIES,
    cr0 = const GUEST_CR0,
    cr4 = const GUEST_CR4,
    udata = const USER_DATA_SELECTOR,
    ucode = const USER_CODE_SELECTOR,
    rflags = const USER_RFLAGS,
    main = sym crate::guest_main,
);

/// The page directories' entries, as our VMM writes them: the ring-0 stub copies them
/// with one `rep movsq` instead of computing them (every ring-0 instruction is emulated).
static PAGE_DIRECTORIES: [u64; PD_ENTRIES] = {
    let mut table = [0u64; PD_ENTRIES];
    let mut i = 0;
    while i < PD_ENTRIES {
        table[i] = (i as u64) * HUGE_PAGE | TABLE | HUGE;
        i += 1;
    }
    table
};
const PD_ENTRIES: usize = (PAGE_DIRS * 512) as usize;

extern "C" {
    /// End of the image, page aligned (`guest.ld`): the first byte the heap may use.
    static __image_end: u8;
}

/// First page-aligned byte after the image.
pub fn image_end() -> u64 {
    // Only the address of the linker symbol is taken (no unsafe needed), never its contents.
    (&raw const __image_end) as u64
}
