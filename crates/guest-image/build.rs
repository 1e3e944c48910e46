//! Builds the freestanding guest (`crates/guest`) with the installed stable toolchain and
//! hands its ELF to this crate through `OUT_DIR`.
//!
//! The guest needs its own RUSTFLAGS (static relocation model, no libc, our linker
//! script), so it is a separate cargo invocation with its own target directory. Passing
//! `--target` explicitly keeps those flags off the guest's build scripts.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let crates = manifest_dir
        .parent()
        .expect("crate lives in crates/")
        .to_path_buf();
    let guest = crates.join("guest");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target_dir = out.join("guest-target");
    let linker_script = guest.join("guest.ld");
    let target = "x86_64-unknown-linux-gnu";

    for dir in ["guest", "functions", "guest-abi"] {
        println!("cargo:rerun-if-changed={}", crates.join(dir).display());
    }

    let rustflags = [
        "-Crelocation-model=static".to_string(),
        "-Clink-arg=-nostartfiles".to_string(),
        "-Clink-arg=-nostdlib".to_string(),
        "-Clink-arg=-static".to_string(),
        "-Clink-arg=-Wl,--build-id=none".to_string(),
        format!("-Clink-arg=-T{}", linker_script.display()),
    ]
    .join("\x1f");

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            target,
            "--manifest-path",
        ])
        .arg(guest.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        // The outer build's flags and wrappers (clippy, coverage) are not for the guest.
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .status()
        .expect("cannot run cargo to build the guest");
    assert!(
        status.success(),
        "building the freestanding guest (crates/guest) failed"
    );

    let elf = target_dir
        .join(target)
        .join("release")
        .join("snapbpf-guest");
    std::fs::copy(&elf, out.join("guest.elf")).expect("cannot copy the guest ELF into OUT_DIR");
}
