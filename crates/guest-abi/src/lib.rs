//! The contract between the snapbpf VMM and the guest runtime.
//!
//! Guest RAM is at most two regions, laid out as Firecracker lays them out: the first
//! [`LOW_MEM_END`] bytes at GPA 0, the rest above the 32-bit gap at [`HIGH_MEM_BASE`].
//! A memory file holds the regions back to back, so a RAM offset is the guest-physical
//! address below the gap and `gpa - HIGH_MEM_BASE + low bytes` above it ([`RamLayout`]).
//! The VMM builds identity-mapped page tables (2 MiB pages, user bit set) so the guest
//! runs entirely at CPL 3: on this host's nested KVM ring-0 guest code is emulated,
//! ring-3 code runs natively. There are no interrupts and no IDT; any guest exception
//! ends in a triple fault the VMM reports.
//!
//! ```text
//! GPA 0x0000_1000  PML4            GPA 0x0000_8000  mailbox (one page, `Mailbox`)
//! GPA 0x0000_2000  PDPT            GPA 0x0001_0000  stack (grows down from STACK_TOP)
//! GPA 0x0000_3000  4 page dirs     GPA 0x0010_0000  page dirs above 4 GiB (as many as RAM needs)
//!                                  GPA 0x0020_0000  guest image, then heap to the low RAM end
//! GPA 0xF000_0000  hypercall page (not RAM: every access exits to the VMM as MMIO)
//! GPA 0x1_0000_0000 the rest of RAM, if any (more heap)
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
/// Page directories at [`PD_GPA`], each mapping 1 GiB with 2 MiB pages: the low 4 GiB.
pub const PAGE_DIRS: u64 = 4;
/// Guest-physical address of the page directories that map RAM above 4 GiB: directory
/// `i` maps `[HIGH_MEM_BASE + i GiB, HIGH_MEM_BASE + (i + 1) GiB)` and is PDPT entry
/// `PAGE_DIRS + i`. Only as many as the high region needs are written.
pub const HIGH_PD_GPA: u64 = 0x10_0000;
/// Room for page directories at [`HIGH_PD_GPA`]: RAM may reach 64 GiB of address space.
pub const HIGH_PAGE_DIRS: u64 = 60;
/// Guest-physical address of the [`Mailbox`] page.
pub const MAILBOX_GPA: u64 = 0x8000;
/// Lowest address of the guest stack.
pub const STACK_BOTTOM: u64 = 0x1_0000;
/// Initial stack pointer.
pub const STACK_TOP: u64 = 0x10_0000;
/// Lowest address the guest image may be linked at.
pub const IMAGE_BASE: u64 = 0x20_0000;
/// Guest-physical address of the hypercall page. It lies in the 32-bit gap, above the low
/// RAM region ([`LOW_MEM_END`]), and is never backed by a memory slot.
pub const HYPERCALL_BASE: u64 = 0xF000_0000;
/// End of the low RAM region the snapbpf VMM lays out (3 GiB). Firecracker ends its own
/// low region elsewhere in the gap; a guest it boots reads where from the e820 table.
pub const LOW_MEM_END: u64 = 3 << 30;
/// Start of the high RAM region (4 GiB), for RAM beyond the low region.
pub const HIGH_MEM_BASE: u64 = 4 << 30;
/// Largest guest RAM the layout allows: the low region plus what [`HIGH_PAGE_DIRS`] map
/// (63 GiB).
pub const MAX_MEM_BYTES: u64 = LOW_MEM_END + (HIGH_PAGE_DIRS << 30);
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
/// 3: RAM in two regions ([`Mailbox::low_mem_bytes`], [`HIGH_MEM_BASE`]), the image at
/// [`IMAGE_BASE`] 2 MiB, [`Mailbox::function_arg`].
pub const ABI_VERSION: u32 = 3;
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
    /// Bytes of guest RAM, written by the VMM at boot (the memory file's size).
    pub mem_bytes: u64,
    /// Bytes of RAM in the low region at GPA 0; the other `mem_bytes - low_mem_bytes`
    /// start at [`HIGH_MEM_BASE`]. Written at boot.
    pub low_mem_bytes: u64,
    /// The function's argument (0 unless the function takes one), written at boot.
    pub function_arg: u64,
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
const _: () = assert!(LOW_MEM_END <= HYPERCALL_BASE);
const _: () = assert!(HYPERCALL_BASE + 4096 <= HIGH_MEM_BASE);
const _: () = assert!(HIGH_MEM_BASE == PAGE_DIRS << 30);
const _: () = assert!(STACK_TOP <= HIGH_PD_GPA);
const _: () = assert!(HIGH_PD_GPA + HIGH_PAGE_DIRS * 4096 <= IMAGE_BASE);
const _: () = assert!(PAGE_DIRS + HIGH_PAGE_DIRS <= 512);

/// One region of guest RAM: `len` bytes at guest-physical `gpa`, at `offset` in the
/// memory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRegion {
    /// Guest-physical start.
    pub gpa: u64,
    /// Offset of its first byte in guest RAM (the memory file).
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Where guest RAM lies: a low region at GPA 0 and, beyond it, a high region at
/// [`HIGH_MEM_BASE`], stored back to back in the memory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamLayout {
    mem_bytes: u64,
    low_bytes: u64,
}

impl RamLayout {
    /// The snapbpf VMM's layout of `mem_bytes` of RAM: up to [`LOW_MEM_END`] low, the rest
    /// high.
    pub const fn builtin(mem_bytes: u64) -> Self {
        let low_bytes = if mem_bytes < LOW_MEM_END {
            mem_bytes
        } else {
            LOW_MEM_END
        };
        Self {
            mem_bytes,
            low_bytes,
        }
    }

    /// A layout with `low_bytes` at GPA 0 and the rest of `mem_bytes` high, or `None` when
    /// the low region would reach into the high one or RAM would pass what the page
    /// tables map.
    pub const fn new(mem_bytes: u64, low_bytes: u64) -> Option<Self> {
        if low_bytes > mem_bytes || low_bytes > HIGH_MEM_BASE {
            return None;
        }
        if mem_bytes - low_bytes > HIGH_PAGE_DIRS << 30 {
            return None;
        }
        Some(Self {
            mem_bytes,
            low_bytes,
        })
    }

    /// Bytes of RAM in all.
    pub const fn mem_bytes(&self) -> u64 {
        self.mem_bytes
    }

    /// Bytes of RAM at GPA 0.
    pub const fn low_bytes(&self) -> u64 {
        self.low_bytes
    }

    /// Bytes of RAM at [`HIGH_MEM_BASE`].
    pub const fn high_bytes(&self) -> u64 {
        self.mem_bytes - self.low_bytes
    }

    /// The low region.
    pub const fn low(&self) -> RamRegion {
        RamRegion {
            gpa: 0,
            offset: 0,
            len: self.low_bytes,
        }
    }

    /// The high region, if RAM has one.
    pub const fn high(&self) -> Option<RamRegion> {
        if self.high_bytes() == 0 {
            return None;
        }
        Some(RamRegion {
            gpa: HIGH_MEM_BASE,
            offset: self.low_bytes,
            len: self.high_bytes(),
        })
    }

    /// The RAM offset of guest-physical `[gpa, gpa + len)`, if the range lies wholly in
    /// one region (a range across the gap is not contiguous in the file).
    pub const fn offset_of(&self, gpa: u64, len: u64) -> Option<u64> {
        let Some(end) = gpa.checked_add(len) else {
            return None;
        };
        if end <= self.low_bytes {
            return Some(gpa);
        }
        if gpa >= HIGH_MEM_BASE && end - HIGH_MEM_BASE <= self.high_bytes() {
            return Some(gpa - HIGH_MEM_BASE + self.low_bytes);
        }
        None
    }

    /// The guest-physical address of RAM offset `offset`, if it lies in RAM.
    pub const fn gpa_of(&self, offset: u64) -> Option<u64> {
        if offset < self.low_bytes {
            Some(offset)
        } else if offset < self.mem_bytes {
            Some(offset - self.low_bytes + HIGH_MEM_BASE)
        } else {
            None
        }
    }
}

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
    /// Kernel command-line token carrying the function's argument (decimal `u64`), when it
    /// takes one: `snapbpf.arg=<n>`. Absent means 0.
    pub const CMDLINE_ARG: &str = "snapbpf.arg=";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guests_are_all_low_and_offsets_are_addresses() {
        let ram = RamLayout::builtin(64 << 20);
        assert_eq!((ram.low_bytes(), ram.high_bytes()), (64 << 20, 0));
        assert_eq!(ram.high(), None);
        assert_eq!(ram.offset_of(0x20_0000, 4096), Some(0x20_0000));
        assert_eq!(
            ram.offset_of((64 << 20) - 4096, 4096),
            Some((64 << 20) - 4096)
        );
        assert_eq!(ram.offset_of(64 << 20, 4096), None);
        assert_eq!(ram.gpa_of(64 << 20), None);
    }

    #[test]
    fn a_large_guest_continues_above_the_gap() {
        let ram = RamLayout::builtin(16 << 30);
        assert_eq!(ram.low_bytes(), LOW_MEM_END);
        let high = ram.high().expect("a high region");
        assert_eq!(
            (high.gpa, high.offset, high.len),
            (HIGH_MEM_BASE, LOW_MEM_END, 13 << 30)
        );
        // The first high page is the file's first byte past the low region, and back.
        assert_eq!(ram.offset_of(HIGH_MEM_BASE, 4096), Some(LOW_MEM_END));
        assert_eq!(ram.gpa_of(LOW_MEM_END), Some(HIGH_MEM_BASE));
        for offset in [0, LOW_MEM_END - 4096, LOW_MEM_END, (16 << 30) - 4096] {
            let gpa = ram.gpa_of(offset).expect("in RAM");
            assert_eq!(ram.offset_of(gpa, 4096), Some(offset));
        }
        // Nothing in the gap, nothing across it, nothing past the end.
        assert_eq!(ram.offset_of(HYPERCALL_BASE, 8), None);
        assert_eq!(ram.offset_of(LOW_MEM_END - 4096, 8192), None);
        assert_eq!(ram.offset_of(HIGH_MEM_BASE + (13 << 30) - 4096, 8192), None);
        assert_eq!(ram.offset_of(u64::MAX - 10, 4096), None);
    }

    #[test]
    fn layouts_the_page_tables_cannot_map_are_refused() {
        assert!(RamLayout::new(MAX_MEM_BYTES, LOW_MEM_END).is_some());
        assert!(RamLayout::new(MAX_MEM_BYTES + (1 << 30), LOW_MEM_END).is_none());
        assert!(
            RamLayout::new(1 << 30, 2 << 30).is_none(),
            "low larger than RAM"
        );
        assert!(RamLayout::new(8 << 30, 5 << 30).is_none(), "low past 4 GiB");
        // Firecracker's layout: a low region ending elsewhere in the gap.
        let fc = RamLayout::new(8 << 30, 0xD000_0000).expect("Firecracker's split");
        assert_eq!(fc.offset_of(HIGH_MEM_BASE, 4096), Some(0xD000_0000));
    }
}
