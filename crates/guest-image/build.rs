//! Builds the freestanding guest (`crates/guest`) with the installed stable toolchain and
//! hands its ELF to this crate through `OUT_DIR`.
//!
//! The guest needs its own RUSTFLAGS (static relocation model, no libc, our linker
//! script), so it is a separate cargo invocation with its own target directory. Passing
//! `--target` explicitly keeps those flags off the guest's build scripts. The command is in
//! `guest_build.rs`, shared with the test that checks the image is reproducible.

use std::path::PathBuf;

include!("guest_build.rs");

fn main() {
    let manifest_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let crates = manifest_dir
        .parent()
        .expect("crate lives in crates/")
        .to_path_buf();
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));

    for dir in ["guest", "functions", "guest-abi"] {
        println!("cargo:rerun-if-changed={}", crates.join(dir).display());
    }
    println!("cargo:rerun-if-changed=guest_build.rs");

    println!(
        "cargo:rerun-if-changed={}",
        crates.join("../Cargo.toml").display()
    );
    let staged = stage_guest_sources(&crates).expect("cannot stage the guest's sources");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = guest_build_command(&cargo, &staged)
        .status()
        .expect("cannot run cargo to build the guest");
    assert!(
        status.success(),
        "building the freestanding guest (crates/guest) failed"
    );
    std::fs::copy(guest_elf(&staged), out.join("guest.elf"))
        .expect("cannot copy the guest ELF into OUT_DIR");
}
