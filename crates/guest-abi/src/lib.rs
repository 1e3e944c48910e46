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
pub const ABI_VERSION: u32 = 1;
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
const _: () = assert!(MAX_MEM_BYTES <= HYPERCALL_BASE);
const _: () = assert!(HYPERCALL_BASE + 4096 <= PAGE_DIRS << 30);

/// Guest page size.
pub const PAGE_SIZE: u64 = 4096;
