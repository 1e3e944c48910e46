//! Compiles `src/bpf/capture.bpf.c` with clang and generates its libbpf-rs skeleton
//! into `OUT_DIR` (the layout of libbpf-rs' `examples/runqslower`).
//!
//! No `vmlinux.h` is needed: the BPF program declares the few tracepoint records it reads
//! with CO-RE relocations, so the build only needs clang, the libbpf headers that
//! libbpf-sys ships, and the UAPI headers (`linux-libc-dev`).

use std::env;
use std::path::{Path, PathBuf};

use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "src/bpf/capture.bpf.c";

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR must be set by cargo"));
    let skel = out.join("capture.skel.rs");

    // `<linux/types.h>` includes `<asm/types.h>`, which Debian keeps in the multiarch dir;
    // `-target bpf` does not search it by default.
    let mut args: Vec<String> = vec!["-Wall".into()];
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    for dir in [
        format!("/usr/include/{arch}-linux-gnu"),
        "/usr/include/x86_64-linux-gnu".to_string(),
    ] {
        if Path::new(&dir).join("asm/types.h").exists() {
            args.push(format!("-I{dir}"));
            break;
        }
    }

    SkeletonBuilder::new()
        .source(SRC)
        .clang_args(args)
        .build_and_generate(&skel)
        .unwrap_or_else(|e| {
            panic!(
                "building the BPF capture program failed: {e:#}\n\
                 (needs clang, libelf-dev, zlib1g-dev, pkg-config and linux-libc-dev)"
            )
        });
    println!("cargo:rerun-if-changed={SRC}");
    println!("cargo:rerun-if-changed=src/bpf/capture.h");
}
