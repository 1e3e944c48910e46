//! The guest image is the same whatever directory it is built in, so a snapshot taken by
//! one checkout opens in another checkout (or on another host) of the same revision.

use std::path::Path;

include!("../guest_build.rs");

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("ls") {
        let entry = entry.expect("entry");
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type().expect("type").is_dir() {
            if entry.file_name() != "target" {
                copy_tree(&src, &dst);
            }
        } else {
            std::fs::copy(&src, &dst).expect("copy");
        }
    }
}

#[test]
fn two_checkout_directories_build_the_same_guest_image() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crates/");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let scratch = tempfile::tempdir().expect("tempdir");
    let mut staged_dirs = Vec::new();
    let mut images = Vec::new();
    // Two checkouts at paths of different lengths.
    for checkout in ["a", "another-checkout/deeper"] {
        let root = scratch.path().join(checkout);
        for krate in GUEST_CRATES {
            copy_tree(&crates.join(krate), &root.join("crates").join(krate));
        }
        std::fs::copy(crates.join("../Cargo.toml"), root.join("Cargo.toml")).expect("copy");
        let staged = stage_guest_sources(&root.join("crates")).expect("stage");
        let status = guest_build_command(&cargo, &staged)
            .status()
            .expect("run cargo");
        assert!(status.success(), "guest build from {root:?}");
        images.push(std::fs::read(guest_elf(&staged)).expect("read the image"));
        staged_dirs.push(staged);
    }
    assert_eq!(
        staged_dirs[0], staged_dirs[1],
        "staging depends on content only"
    );
    assert!(images[0].len() > 4096);
    assert!(
        images[0] == images[1],
        "the guest image depends on the build directory"
    );
    // And it is the image this build embeds: the checkout this test runs in is a third
    // directory.
    assert!(
        images[0] == snapbpf_guest_image::GUEST_ELF,
        "the embedded guest differs from one built elsewhere"
    );
    // No checkout path is left in the image.
    let text = String::from_utf8_lossy(&images[0]);
    assert!(!text.contains("/tmp/"), "a build path is embedded");
}
