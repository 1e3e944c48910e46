//! The freestanding guest program, embedded.
//!
//! `build.rs` builds `crates/guest` (the runtime plus the whole function suite) as a static
//! ELF; this crate exposes its bytes so the VMM can load it without any file on disk.

/// The guest ELF image.
pub static GUEST_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/guest.elf"));

/// A digest identifying this guest build, recorded in snapshots so a snapshot taken with
/// another guest is refused instead of resumed into code that moved.
pub fn guest_digest() -> u64 {
    // FNV-1a over the image: cheap, and any change to the code changes it.
    GUEST_ELF.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
