//! The image's own idea of where it ends (`__image_end`, which the guest uses as its heap
//! start when Firecracker boots it) is where snapbpf's VMM thinks it ends (the page-aligned
//! end of the highest `PT_LOAD` segment), so both VMMs give the guest the same heap.

use snapbpf_guest_abi::{IMAGE_BASE, PAGE_SIZE};
use snapbpf_guest_image::GUEST_ELF;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The page-aligned end of the highest `PT_LOAD` segment.
fn load_end(elf: &[u8]) -> u64 {
    let (phoff, phentsize, phnum) = (
        u64_at(elf, 32) as usize,
        u16_at(elf, 54) as usize,
        u16_at(elf, 56) as usize,
    );
    (0..phnum)
        .map(|i| phoff + i * phentsize)
        .filter(|&ph| u32_at(elf, ph) == 1)
        .map(|ph| u64_at(elf, ph + 24) + u64_at(elf, ph + 40))
        .max()
        .expect("a PT_LOAD segment")
        .next_multiple_of(PAGE_SIZE)
}

/// The value of the symbol `name` in the image's symbol table.
fn symbol(elf: &[u8], name: &str) -> Option<u64> {
    let (shoff, shentsize, shnum) = (
        u64_at(elf, 40) as usize,
        u16_at(elf, 58) as usize,
        u16_at(elf, 60) as usize,
    );
    let section = |i: usize| shoff + i * shentsize;
    for i in 0..shnum {
        let sh = section(i);
        if u32_at(elf, sh + 4) != 2 {
            continue; // not SHT_SYMTAB
        }
        let (off, size, link, entsize) = (
            u64_at(elf, sh + 24) as usize,
            u64_at(elf, sh + 32) as usize,
            u32_at(elf, sh + 40) as usize,
            u64_at(elf, sh + 56) as usize,
        );
        let strtab = u64_at(elf, section(link) + 24) as usize;
        for sym in (off..off + size).step_by(entsize) {
            let at = strtab + u32_at(elf, sym) as usize;
            let end = at + elf[at..].iter().position(|&b| b == 0).expect("NUL");
            if &elf[at..end] == name.as_bytes() {
                return Some(u64_at(elf, sym + 8));
            }
        }
    }
    None
}

#[test]
fn the_image_end_symbol_is_where_the_vmm_puts_the_heap() {
    let end = symbol(GUEST_ELF, "__image_end").expect("the image has an __image_end symbol");
    assert_eq!(end, load_end(GUEST_ELF), "__image_end {end:#x}");
    assert_eq!(end % PAGE_SIZE, 0);
    // Firecracker and our VMM both enter at e_entry: _start, first in the image.
    assert_eq!(u64_at(GUEST_ELF, 24), IMAGE_BASE);
}
