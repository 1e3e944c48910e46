//! The contract between the snapbpf VMM and the guest runtime.
//!
//! Guest physical memory is one region at GPA 0. The VMM builds identity-mapped page
//! tables (2 MiB pages, user bit set) so the guest runs entirely at CPL 3: on this host's
//! nested KVM ring-0 guest code is emulated, ring-3 code runs natively. There are no
//! interrupts and no IDT; any guest exception ends in a triple fault the VMM reports.
//!
//! ```text
//! GPA 0x0000_1000  PML4            GPA 0x0000_8000  mailbox (one page, `Mailbox`)
//! GPA 0x0000_2000  PDPT            GPA 0x0001_0000  stack (grows down from STACK_TOP)
//! GPA 0x0000_3000  4 page dirs     GPA 0x0010_0000  guest image, then heap to RAM end
//! GPA 0xF000_0000  hypercall page (not RAM: every access exits to the VMM as MMIO)
//! ```
//!
//! A hypercall is one 8-byte write to `HYPERCALL_BASE + offset`; its arguments other than
//! the written value travel in the mailbox.
//!
//! # Two VMMs, two transports
//!
//! The same image also boots under an unmodified Firecracker, which loads the ELF's
//! `PT_LOAD` segments and enters `_start` at ring 0 in long mode on its own page tables
//! (GDT at 0x500, boot parameters, the Linux "zero page", at [`FC_BOOT_PARAMS_GPA`], page
//! tables at 0x9000..0xbfff, `rsp` 0x8ff0 inside the mailbox page, the command line at
//! 0x20000 inside the stack). `_start` tells the two apart by its privilege level: at
//! ring 0 it switches to our stack, builds exactly the page tables above, loads a GDT with
//! the ring-3 selectors our VMM uses ([`USER_CODE_SELECTOR`], [`USER_DATA_SELECTOR`]),
//! sets CR0/CR4/CR3 as our VMM does and `iretq`s to ring 3 with IOPL 3; there it fills
//! the mailbox's boot fields itself (from the boot parameters' e820 table and the
//! [`serial::CMDLINE_FUNCTION`] token) and selects [`TRANSPORT_SERIAL`]. From then on both
//! VMMs run the same code; only [`Mailbox::transport`] differs. The [`serial`] module holds
//! the line protocol spoken over COM1.
#![no_std]
#![warn(missing_docs)]

/// Guest-physical address of the PML4 page.
pub const PML4_GPA: u64 = 0x1000;
/// Guest-physical address of the PDPT page.
pub const PDPT_GPA: u64 = 0x2000;
/// Guest-physical address of the first of [`PAGE_DIRS`] page directories.
pub const PD_GPA: u64 = 0x3000;
/// Page directories, each mapping 1 GiB with 2 MiB pages: the guest sees 4 GiB.
pub const PAGE_DIRS: u64 = 4;
/// Guest-physical address of the [`Mailbox`] page.
pub const MAILBOX_GPA: u64 = 0x8000;
/// Lowest address of the guest stack.
pub const STACK_BOTTOM: u64 = 0x1_0000;
/// Initial stack pointer.
pub const STACK_TOP: u64 = 0x10_0000;
/// Lowest address the guest image may be linked at.
pub const IMAGE_BASE: u64 = 0x10_0000;
/// Guest-physical address of the hypercall page. It lies above the largest guest RAM
/// ([`MAX_MEM_BYTES`]) and is never backed by a memory slot.
pub const HYPERCALL_BASE: u64 = 0xF000_0000;
/// Largest guest RAM the layout allows (3 GiB).
pub const MAX_MEM_BYTES: u64 = 3 << 30;
/// Code selector of the guest's ring-3 code (GDT entry 3, RPL 3), in both VMMs.
pub const USER_CODE_SELECTOR: u16 = 0x18 | 3;
/// Data and stack selector of the guest's ring-3 code (GDT entry 4, RPL 3), in both VMMs.
pub const USER_DATA_SELECTOR: u16 = 0x20 | 3;
/// CR0 the guest runs with: PE | MP | ET | NE | WP | PG (EM clear so SSE executes).
pub const GUEST_CR0: u64 = 0x8001_0033;
/// CR4 the guest runs with: PAE | OSFXSR | OSXMMEXCPT (OSXSAVE clear: SSE only).
pub const GUEST_CR4: u64 = 0x620;
/// Where Firecracker puts the Linux boot parameters (its `ZERO_PAGE_START`); `rsi` points
/// here at its entry. Our page tables end below it.
pub const FC_BOOT_PARAMS_GPA: u64 = 0x7000;

/// Hypercall: the guest finished its init phase; the VMM may snapshot now.
/// Value: [`MAILBOX_MAGIC`].
pub const HC_READY: u64 = 0x00;
/// Hypercall: an invocation finished. Value: the output checksum.
pub const HC_DONE: u64 = 0x08;
/// Hypercall: console output. Value: number of bytes in `Mailbox::console`.
pub const HC_CONSOLE: u64 = 0x10;
/// Hypercall: fresh-allocation hints. Value: number of entries in `Mailbox::hints`.
pub const HC_FRESH_HINTS: u64 = 0x18;
/// Hypercall: the guest panicked. Value: number of bytes of message in `Mailbox::console`.
pub const HC_PANIC: u64 = 0x20;

/// Magic at the start of the mailbox: "SNAPBPF1" little-endian.
pub const MAILBOX_MAGIC: u64 = u64::from_le_bytes(*b"SNAPBPF1");
/// Version of this ABI. A snapshot records it; restore refuses another.
///
/// 2: [`Mailbox::transport`] (the serial transport for Firecracker).
pub const ABI_VERSION: u32 = 2;
/// [`Mailbox::transport`]: hypercalls to the VMM (the built-in VMM; the default, 0).
pub const TRANSPORT_HYPERCALL: u32 = 0;
/// [`Mailbox::transport`]: the [`serial`] line protocol on COM1 (an unmodified
/// Firecracker, which cannot see our hypercalls). Fresh-allocation hints stay off.
pub const TRANSPORT_SERIAL: u32 = 1;
/// Capacity of [`Mailbox::console`].
pub const CONSOLE_BYTES: usize = 1024;
/// Capacity of [`Mailbox::hints`].
pub const MAX_HINTS: usize = 128;

/// One fresh-allocation hint: guest-physical range `[gpa, gpa + len)`, page aligned.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FreshRange {
    /// Start, page aligned.
    pub gpa: u64,
    /// Length in bytes, a multiple of the page size.
    pub len: u64,
}

/// The page the VMM and guest exchange data through, at [`MAILBOX_GPA`].
///
/// The VMM writes `magic` to `input` before the guest starts or resumes; the guest writes
/// the rest.
#[repr(C)]
#[derive(Debug)]
pub struct Mailbox {
    /// [`MAILBOX_MAGIC`], written by the VMM at boot.
    pub magic: u64,
    /// [`ABI_VERSION`], written by the VMM at boot.
    pub abi_version: u32,
    /// Index of the function to run in the suite, written by the VMM at boot.
    pub function: u32,
    /// Bytes of guest RAM, written by the VMM at boot.
    pub mem_bytes: u64,
    /// First free byte after the guest image, page aligned; the heap starts here.
    pub heap_start: u64,
    /// Input number for the next invocation, written by the VMM before every resume.
    pub input: u32,
    /// Non-zero when the VMM wants fresh-allocation hints (PV filtering on).
    pub hints_enabled: u32,
    /// How the guest reports to its VMM: [`TRANSPORT_HYPERCALL`] (what our VMM writes at
    /// boot) or [`TRANSPORT_SERIAL`] (written by the guest itself when Firecracker booted
    /// it). Read once, at boot.
    pub transport: u32,
    /// Zero; keeps the following fields 8-byte aligned.
    pub reserved: u32,
    /// Checksum of the last invocation's output, written by the guest.
    pub result: u64,
    /// Number of invocations the guest has completed.
    pub invocations: u64,
    /// Fresh-allocation hints for [`HC_FRESH_HINTS`].
    pub hints: [FreshRange; MAX_HINTS],
    /// Console or panic message bytes for [`HC_CONSOLE`] / [`HC_PANIC`].
    pub console: [u8; CONSOLE_BYTES],
}

const _: () = assert!(core::mem::size_of::<Mailbox>() <= 4096);
const _: () = assert!(MAILBOX_GPA + 4096 <= STACK_BOTTOM);
const _: () = assert!(PD_GPA + PAGE_DIRS * 4096 <= MAILBOX_GPA);
const _: () = assert!(PD_GPA + PAGE_DIRS * 4096 <= FC_BOOT_PARAMS_GPA);
const _: () = assert!(FC_BOOT_PARAMS_GPA + 4096 <= MAILBOX_GPA);
const _: () = assert!(MAX_MEM_BYTES <= HYPERCALL_BASE);
const _: () = assert!(HYPERCALL_BASE + 4096 <= PAGE_DIRS << 30);

/// Guest page size.
pub const PAGE_SIZE: u64 = 4096;

/// The line protocol between the guest and its host over the serial port
/// ([`TRANSPORT_SERIAL`]): what the guest writes, and what the host writes back.
///
/// Every message is one line of ASCII ending in `\n`; the guest ignores `\r`. Fields are
/// separated by one space; numbers are decimal unless stated.
///
/// ```text
/// guest -> host  snapbpf ready abi=<ABI_VERSION> function=<index>       after init (the snapshot point)
/// host -> guest  input <n>                                              one per invocation
/// guest -> host  snapbpf done checksum=<16 lowercase hex digits> invocations=<count> cycles=<n>
/// guest -> host  snapbpf console <text>                                 console output (any time)
/// guest -> host  snapbpf panic <message>                                then the guest spins forever
/// ```
///
/// `invocations` counts the invocations completed since boot (so 1 after the first one in
/// a restored VM); `cycles` is the `rdtsc` delta around the invocation. `<text>` and
/// `<message>` have every control character replaced by a space and are cut at
/// [`serial::MAX_TEXT`] bytes. A line the guest cannot parse as `input <n>` is answered with
/// a console line naming it ([`serial::BAD_LINE`]) and otherwise ignored.
///
/// The guest uses COM1 from ring 3 (IOPL 3): it polls the line status register, with
/// `pause` between reads, since every port access is a VM exit.
pub mod serial {
    /// COM1's data register (transmit holding register / receive buffer).
    pub const COM1_DATA: u16 = 0x3f8;
    /// COM1's line status register.
    pub const COM1_LINE_STATUS: u16 = 0x3fd;
    /// Line status: a received byte is waiting in the data register.
    pub const LSR_DATA_READY: u8 = 1 << 0;
    /// Line status: the transmitter is empty (with FIFOs: the whole transmit FIFO is).
    pub const LSR_TRANSMIT_EMPTY: u8 = 1 << 5;
    /// Bytes the guest writes after one "transmitter empty" status (a 16550A's FIFO).
    pub const TRANSMIT_BURST: usize = 16;

    /// Start of the line reporting the end of init: then ` abi=<ABI_VERSION> function=<index>`.
    pub const READY: &str = "snapbpf ready";
    /// Start of the line reporting an invocation: then ` checksum=.. invocations=.. cycles=..`.
    pub const DONE: &str = "snapbpf done";
    /// Start of a console line: then ` <text>`.
    pub const CONSOLE: &str = "snapbpf console";
    /// Start of the line reporting a panic: then ` <message>`.
    pub const PANIC: &str = "snapbpf panic";
    /// The host's request for one invocation: then ` <n>` (a `u32`).
    pub const INPUT: &str = "input";

    /// Key of the ABI version in the ready line.
    pub const KEY_ABI: &str = "abi=";
    /// Key of the function index in the ready line.
    pub const KEY_FUNCTION: &str = "function=";
    /// Key of the checksum in the done line (exactly [`CHECKSUM_DIGITS`] lowercase hex digits).
    pub const KEY_CHECKSUM: &str = "checksum=";
    /// Key of the invocation count in the done line.
    pub const KEY_INVOCATIONS: &str = "invocations=";
    /// Key of the invocation's `rdtsc` delta in the done line.
    pub const KEY_CYCLES: &str = "cycles=";
    /// Hex digits of the checksum in the done line.
    pub const CHECKSUM_DIGITS: usize = 16;

    /// Longest line the guest reads from the host; longer lines are refused whole.
    pub const MAX_INPUT_LINE: usize = 64;
    /// Longest console text or panic message the guest writes, in bytes.
    pub const MAX_TEXT: usize = 480;
    /// Start of the console text the guest answers an unparsable host line with.
    pub const BAD_LINE: &str = "ignored a line that is not `input <n>`";

    /// Kernel command-line token carrying the function index when Firecracker boots the
    /// guest: `snapbpf.function=<index>`.
    pub const CMDLINE_FUNCTION: &str = "snapbpf.function=";
}
