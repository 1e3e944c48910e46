//! Boot-time layout: loading the guest ELF image, building page tables, filling the mailbox.
//!
//! See [`snapbpf_guest_abi`] for the memory map.

use snapbpf_guest_abi::{
    Mailbox, RamLayout, ABI_VERSION, HIGH_MEM_BASE, HIGH_PD_GPA, IMAGE_BASE, MAILBOX_GPA,
    MAILBOX_MAGIC, PAGE_DIRS, PAGE_SIZE, PDPT_GPA, PD_GPA, PML4_GPA, TRANSPORT_HYPERCALL,
};
use std::mem::offset_of;

use crate::memory::{GuestMemory, MemoryError};

/// Errors loading the guest image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image is not a 64-bit little-endian x86-64 executable ELF.
    #[error("guest image is not a static x86-64 ELF64 executable: {0}")]
    NotElf(&'static str),
    /// A segment lies outside the allowed range.
    #[error("guest image segment at {vaddr:#x}+{memsz:#x} does not fit in low guest memory above {IMAGE_BASE:#x}")]
    SegmentOutOfRange {
        /// Segment start.
        vaddr: u64,
        /// Segment size in memory.
        memsz: u64,
    },
    /// Writing to guest memory failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

/// Where the loaded image put things.
#[derive(Debug, Clone, Copy)]
pub struct LoadedImage {
    /// Entry point (guest virtual = guest physical).
    pub entry: u64,
    /// First page-aligned byte after the image: the heap starts here.
    pub end: u64,
}

fn field<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N], ImageError> {
    bytes
        .get(at..at + N)
        .and_then(|s| s.try_into().ok())
        .ok_or(ImageError::NotElf("truncated"))
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, ImageError> {
    Ok(u16::from_le_bytes(field(b, at)?))
}
fn u32_at(b: &[u8], at: usize) -> Result<u32, ImageError> {
    Ok(u32::from_le_bytes(field(b, at)?))
}
fn u64_at(b: &[u8], at: usize) -> Result<u64, ImageError> {
    Ok(u64::from_le_bytes(field(b, at)?))
}

/// Copies the `PT_LOAD` segments of `elf` into guest memory at their physical addresses.
pub fn load_elf(mem: &GuestMemory, elf: &[u8]) -> Result<LoadedImage, ImageError> {
    const PT_LOAD: u32 = 1;
    if elf.get(0..4) != Some(b"\x7fELF") {
        return Err(ImageError::NotElf("bad magic"));
    }
    if elf[4] != 2 || elf.get(5) != Some(&1) {
        return Err(ImageError::NotElf("not ELF64 little-endian"));
    }
    if u16_at(elf, 16)? != 2 || u16_at(elf, 18)? != 62 {
        return Err(ImageError::NotElf("not an x86-64 executable"));
    }
    let entry = u64_at(elf, 24)?;
    let phoff = u64_at(elf, 32)? as usize;
    let phentsize = u16_at(elf, 54)? as usize;
    let phnum = u16_at(elf, 56)? as usize;
    if phentsize < 56 {
        return Err(ImageError::NotElf("bad program header size"));
    }
    // The image lives in the low region, where RAM offsets are guest-physical addresses.
    let low_end = RamLayout::builtin(mem.len()).low_bytes();
    let mut end = IMAGE_BASE;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(elf, ph)? != PT_LOAD {
            continue;
        }
        let offset = u64_at(elf, ph + 8)? as usize;
        let paddr = u64_at(elf, ph + 24)?;
        let filesz = u64_at(elf, ph + 32)? as usize;
        let memsz = u64_at(elf, ph + 40)?;
        let seg_end = paddr.checked_add(memsz);
        if paddr < IMAGE_BASE || seg_end.is_none_or(|e| e > low_end) || (filesz as u64) > memsz {
            return Err(ImageError::SegmentOutOfRange {
                vaddr: paddr,
                memsz,
            });
        }
        let data = elf
            .get(offset..offset + filesz)
            .ok_or(ImageError::NotElf("segment data past end of file"))?;
        mem.write(paddr, data)?;
        // Zero the bss explicitly: the memory may not come zeroed.
        let bss = vec![0u8; (memsz as usize) - filesz];
        mem.write(paddr + filesz as u64, &bss)?;
        end = end.max(paddr + memsz);
    }
    if entry < IMAGE_BASE || entry >= end {
        return Err(ImageError::NotElf("entry point outside the loaded image"));
    }
    Ok(LoadedImage {
        entry,
        end: end.next_multiple_of(PAGE_SIZE),
    })
}

/// Page-table entry bits.
const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const HUGE: u64 = 1 << 7;

/// Builds identity page tables with 2 MiB user pages: the low 4 GiB through `PAGE_DIRS`
/// directories at `PD_GPA`, and the high RAM region (if any) through one directory per GiB
/// at `HIGH_PD_GPA`.
///
/// Every level has the user bit so CPL-3 code can touch all of it, including the hypercall
/// page in the gap (which is mapped in the page tables but backed by no memory slot).
pub fn build_page_tables(mem: &GuestMemory) -> Result<(), MemoryError> {
    mem.write_u64(PML4_GPA, PDPT_GPA | PRESENT | WRITABLE | USER)?;
    let high_dirs = RamLayout::builtin(mem.len()).high_bytes().div_ceil(1 << 30);
    let directories = (0..PAGE_DIRS)
        .map(|dir| (PD_GPA + dir * PAGE_SIZE, dir << 30))
        .chain(
            (0..high_dirs).map(|dir| (HIGH_PD_GPA + dir * PAGE_SIZE, HIGH_MEM_BASE + (dir << 30))),
        );
    for (slot, (pd, maps)) in directories.enumerate() {
        mem.write_u64(PDPT_GPA + slot as u64 * 8, pd | PRESENT | WRITABLE | USER)?;
        mem.write(pd, &directory(maps))?;
    }
    Ok(())
}

/// One page directory mapping the GiB at `base` with 2 MiB user pages.
fn directory(base: u64) -> Vec<u8> {
    let mut entries = vec![0u8; PAGE_SIZE as usize];
    for (i, e) in entries.chunks_exact_mut(8).enumerate() {
        let phys = base | ((i as u64) << 21);
        e.copy_from_slice(&(phys | PRESENT | WRITABLE | USER | HUGE).to_le_bytes());
    }
    entries
}

/// Writes the boot-time fields of the mailbox.
pub fn init_mailbox(
    mem: &GuestMemory,
    function: u32,
    function_arg: u64,
    heap_start: u64,
    hints_enabled: bool,
) -> Result<(), MemoryError> {
    let at = |off: usize| MAILBOX_GPA + off as u64;
    mem.write_u64(at(offset_of!(Mailbox, magic)), MAILBOX_MAGIC)?;
    mem.write(
        at(offset_of!(Mailbox, abi_version)),
        &ABI_VERSION.to_le_bytes(),
    )?;
    mem.write(at(offset_of!(Mailbox, function)), &function.to_le_bytes())?;
    mem.write_u64(at(offset_of!(Mailbox, mem_bytes)), mem.len())?;
    mem.write_u64(
        at(offset_of!(Mailbox, low_mem_bytes)),
        RamLayout::builtin(mem.len()).low_bytes(),
    )?;
    mem.write_u64(at(offset_of!(Mailbox, function_arg)), function_arg)?;
    mem.write_u64(at(offset_of!(Mailbox, heap_start)), heap_start)?;
    // This VMM serves the guest's hypercalls (the serial transport is for Firecracker).
    mem.write(
        at(offset_of!(Mailbox, transport)),
        &TRANSPORT_HYPERCALL.to_le_bytes(),
    )?;
    set_hints_enabled(mem, hints_enabled)
}

/// Sets the input of the next invocation.
pub fn set_input(mem: &GuestMemory, input: u32) -> Result<(), MemoryError> {
    mem.write(
        MAILBOX_GPA + offset_of!(Mailbox, input) as u64,
        &input.to_le_bytes(),
    )
}

/// Turns fresh-allocation hints on or off for the following invocations.
pub fn set_hints_enabled(mem: &GuestMemory, enabled: bool) -> Result<(), MemoryError> {
    mem.write(
        MAILBOX_GPA + offset_of!(Mailbox, hints_enabled) as u64,
        &u32::from(enabled).to_le_bytes(),
    )
}

/// Reads the ABI magic and version from a mailbox.
pub fn mailbox_identity(mem: &GuestMemory) -> Result<(u64, u32), MemoryError> {
    let magic = mem.read_u64(MAILBOX_GPA + offset_of!(Mailbox, magic) as u64)?;
    let mut v = [0u8; 4];
    mem.read(
        MAILBOX_GPA + offset_of!(Mailbox, abi_version) as u64,
        &mut v,
    )?;
    Ok((magic, u32::from_le_bytes(v)))
}
