//! The guest build stages sources (and so runs build scripts) only in a directory the
//! building user owns: a directory another local user created first is refused, not used.
//! (On a main before this, `/tmp/snapbpf-guest-build` created by `nobody` was filled and
//! built from by root.)

use std::os::unix::fs::{MetadataExt, PermissionsExt};

include!("../guest_build.rs");

const NOBODY: u32 = 65534;

/// One test, so the HOME it sets is seen by nothing else in this process.
#[test]
fn the_staging_root_is_the_building_users_own() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root, to create a directory as another user");
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI runs as root"
        );
        return;
    }
    let scratch = tempfile::tempdir().expect("tempdir");
    let home = scratch.path().join("home");
    std::fs::create_dir(&home).expect("mkdir");
    std::env::set_var("HOME", &home);

    // Ours, fresh: created 0700.
    let root = staging_root().expect("a fresh staging root");
    assert!(root.starts_with(&home), "{root:?}");
    let mode = std::fs::metadata(&root).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{root:?} is {mode:o}");

    // Squatted: another user made it first.
    std::fs::remove_dir(&root).expect("rmdir");
    std::fs::create_dir(&root).expect("mkdir");
    std::os::unix::fs::chown(&root, Some(NOBODY), Some(NOBODY)).expect("chown");
    let err = staging_root().expect_err("a staging root owned by nobody");
    assert!(err.to_string().contains("another user"), "{err}");

    // Ours but writable by others, or a symbolic link to someone else's: refused too.
    std::fs::remove_dir(&root).expect("rmdir");
    std::fs::create_dir(&root).expect("mkdir");
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    assert!(staging_root().is_err(), "a world-writable staging root");
    std::fs::remove_dir(&root).expect("rmdir");
    let elsewhere = scratch.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).expect("mkdir");
    std::os::unix::fs::symlink(&elsewhere, &root).expect("symlink");
    assert!(
        staging_root().is_err(),
        "a symbolic link as the staging root"
    );

    // A home that is not ours is not used at all: the per-uid fallback is.
    std::fs::remove_file(&root).expect("rm");
    std::os::unix::fs::chown(&home, Some(NOBODY), Some(NOBODY)).expect("chown");
    let root = staging_root().expect("the fallback");
    assert!(
        !root.starts_with(&home),
        "{root:?} is under another user's home"
    );
    assert_eq!(std::fs::metadata(&root).expect("stat").uid(), 0);
}
