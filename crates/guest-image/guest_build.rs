// How the freestanding guest is built: shared by build.rs and the reproducibility test
// (`include!`d by both, so they cannot drift apart).
//
// Reproducibility: cargo derives each crate's symbol hashes (`-C metadata`) from, among
// others, the absolute path of path dependencies outside the building workspace, and the
// guest's dependencies (`functions`, `guest-abi`) are outside its own workspace. Symbol
// hashes decide how code is laid out, so a checkout in another directory would build
// another image, and its snapshots would be refused ("taken with another guest build").
// The sources are therefore staged into a directory named by their content
// (`~/.cache/snapbpf/guest-build/<hash>`), the same for every checkout of one revision by
// one user, and built there, with that path remapped away.
//
// Security: cargo runs whatever `build.rs` it finds in the staged tree, as the building
// user (root, for snapbpf). The staging root is therefore the building user's own: under
// its home directory (or, without one, `/tmp/snapbpf-guest-build-UID`), created 0700, and
// refused unless it is a real directory owned by that user that no one else can write.
// Never a shared, predictable path another user could create first.

/// The target the guest is built for (freestanding by its flags, not by the triple).
pub const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Where staged guest sources live, one directory per content hash: a directory only the
/// building user controls (see the security note above), created if missing.
pub fn staging_root() -> std::io::Result<std::path::PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    let home = std::env::var_os("HOME")
        .map(std::path::PathBuf::from)
        .filter(|h| h.is_absolute())
        .filter(|h| std::fs::metadata(h).is_ok_and(|m| m.is_dir() && m.uid() == uid));
    let root = match home {
        Some(home) => {
            let cache = home.join(".cache").join("snapbpf");
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&cache)?;
            cache.join("guest-build")
        }
        None => std::path::PathBuf::from(format!("/tmp/snapbpf-guest-build-{uid}")),
    };
    match std::fs::DirBuilder::new().mode(0o700).create(&root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    // Checked after creating: one that was there first must be ours and private.
    let meta = std::fs::symlink_metadata(&root)?;
    if !meta.is_dir() || meta.uid() != uid || meta.permissions().mode() & 0o022 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a directory of uid {uid} that only it can write (another user may \
                 have created it); remove it, or set HOME to a directory of your own",
                root.display()
            ),
        ));
    }
    Ok(root)
}

/// The crates the guest is built from, under `crates/`.
pub const GUEST_CRATES: [&str; 3] = ["guest", "guest-abi", "functions"];

fn collect_files(dir: &std::path::Path, rel: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let rel = rel.join(&name);
        match entry.file_type() {
            Ok(t) if t.is_dir() && name != "target" => collect_files(&entry.path(), &rel, out),
            Ok(t) if t.is_file() => out.push(rel),
            _ => {}
        }
    }
}

/// Copies the guest's sources from the checkout whose `crates/` is `crates` (and the
/// workspace manifest they inherit from, with only them as members) into
/// `staging_root()/<content hash>`; returns that directory. Files already there with the
/// same content are left alone, so rebuilds stay incremental; files there that are not
/// the guest's sources are removed (cargo would build a stray `build.rs`).
pub fn stage_guest_sources(crates: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    let mut files = Vec::new();
    for krate in GUEST_CRATES {
        collect_files(
            &crates.join(krate),
            &std::path::Path::new("crates").join(krate),
            &mut files,
        );
    }
    let root = crates.parent().unwrap_or(crates);
    let mut contents = Vec::new();
    for rel in &files {
        contents.push((rel.clone(), std::fs::read(root.join(rel))?));
    }
    let manifest = std::fs::read_to_string(root.join("Cargo.toml"))?;
    let members = manifest
        .lines()
        .find(|l| l.starts_with("members"))
        .unwrap_or_default()
        .to_string();
    let manifest = manifest.replace(
        &members,
        r#"members = ["crates/guest-abi", "crates/functions"]"#,
    );
    // The guest crates inherit no dependency from the workspace: leave the host's list
    // out, so adding a host dependency does not move the staging directory (whose path
    // feeds the guest's symbol hashes, hence its digest and every snapshot's binding).
    let mut in_host_deps = false;
    let manifest: String = manifest
        .lines()
        .filter(|line| {
            if line.starts_with('[') {
                in_host_deps = line.trim() == "[workspace.dependencies]";
            }
            !in_host_deps
        })
        .map(|line| format!("{line}\n"))
        .collect();
    contents.push((std::path::PathBuf::from("Cargo.toml"), manifest.into_bytes()));
    // FNV-1a over every path and content: the staging directory's name.
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for (rel, bytes) in &contents {
        for &b in rel.to_string_lossy().as_bytes().iter().chain([0u8].iter()).chain(bytes) {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    let staged = staging_root()?.join(format!("{hash:016x}"));
    let mut present = Vec::new();
    collect_files(&staged.join("crates"), std::path::Path::new("crates"), &mut present);
    for rel in present {
        if !contents.iter().any(|(wanted, _)| *wanted == rel) {
            std::fs::remove_file(staged.join(rel))?;
        }
    }
    for (rel, bytes) in &contents {
        let dst = staged.join(rel);
        if std::fs::read(&dst).ok().as_deref() == Some(bytes.as_slice()) {
            continue;
        }
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // Another build may stage the same content at once: write aside, rename over.
        let tmp = dst.with_extension(format!("tmp-{}", std::process::id()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &dst)?;
    }
    Ok(staged)
}

/// The cargo command (`cargo` is the outer build's) that builds the guest staged at
/// `staged` (see [`stage_guest_sources`]) into `staged/target`.
pub fn guest_build_command(
    cargo: &std::ffi::OsStr,
    staged: &std::path::Path,
) -> std::process::Command {
    let guest = staged.join("crates").join("guest");
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cargo")));
    let mut flags = vec![
        "-Crelocation-model=static".to_string(),
        "-Clink-arg=-nostartfiles".to_string(),
        "-Clink-arg=-nostdlib".to_string(),
        "-Clink-arg=-static".to_string(),
        "-Clink-arg=-Wl,--build-id=none".to_string(),
        format!("-Clink-arg=-T{}", guest.join("guest.ld").display()),
        format!("--remap-path-prefix={}=/snapbpf", staged.display()),
    ];
    if let Some(home) = cargo_home {
        flags.push(format!("--remap-path-prefix={}=/cargo", home.display()));
    }
    let mut c = std::process::Command::new(cargo);
    c.args(["build", "--release", "--locked", "--target", GUEST_TARGET, "--manifest-path"])
        .arg(guest.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(staged.join("target"))
        // The outer build's flags and wrappers (clippy, coverage) are not for the guest.
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"));
    c
}

/// Where [`guest_build_command`] leaves the guest ELF.
pub fn guest_elf(staged: &std::path::Path) -> std::path::PathBuf {
    staged
        .join("target")
        .join(GUEST_TARGET)
        .join("release")
        .join("snapbpf-guest")
}
