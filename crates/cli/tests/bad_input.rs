//! Bad input gets a one-line error and a non-zero exit, never a panic, and leaves no
//! half-written snapshot behind.

mod common;

use std::path::Path;

use common::*;

fn copy_snapshot(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for name in ["memory", "vcpu", "snapshot.json"] {
        std::fs::copy(from.join(name), to.join(name)).expect("copy snapshot file");
    }
}

fn edit_meta(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("snapshot.json");
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    edit(&mut meta);
    std::fs::write(&path, serde_json::to_vec(&meta).expect("json")).expect("write");
}

#[test]
fn argument_errors() {
    // These fail before touching KVM.
    let out = run(&["invoke"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "missing argument is a usage error"
    );
    fails(
        &[
            "snapshot",
            "no-such-function",
            "--out",
            "/var/tmp/snapbpf-never",
        ],
        "cannot run function 'no-such-function': no function of that name",
    );
    assert!(!Path::new("/var/tmp/snapbpf-never").exists());
    fails(&["boot", "no-such-function"], "no function of that name");
    fails(&["boot", "pyaes", "--input", "99"], "takes inputs 0..");
    fails(
        &["invoke", "/nonexistent/snapshot"],
        "is not a snapshot directory",
    );
    fails(&["inspect", "/etc"], "is not a snapshot directory");
    fails(
        &[
            "bench",
            "--strategies",
            "snapbpf:fast",
            "--out",
            "/var/tmp/snapbpf-never",
        ],
        "unknown option 'fast' of strategy 'snapbpf' (its options: no-prefetch, no-pv, no-premap, 4k, thp, store=SOCKET)",
    );
    fails(
        &[
            "bench",
            "--strategies",
            "reap:uffd-handler",
            "--out",
            "/var/tmp/snapbpf-never",
        ],
        "option 'uffd-handler' of strategy 'reap': needs a value (uffd-handler=SOCKET)",
    );
    fails(
        &[
            "bench",
            "--breakdown",
            "reap:no-pv",
            "--out",
            "/var/tmp/snapbpf-never",
        ],
        "--no-pv applies only to the snapbpf strategy",
    );
    fails(
        &[
            "bench",
            "--functions",
            "nope",
            "--out",
            "/var/tmp/snapbpf-never",
        ],
        "cannot run function 'nope': no function of that name",
    );
    assert!(!Path::new("/var/tmp/snapbpf-never").exists());
    fails(
        &["bench", "--replot", "/nonexistent/results.json"],
        "cannot read /nonexistent/results.json",
    );
    fails(
        &["bench", "--replot", "/etc/hostname"],
        "is not the results.json of a snapbpf bench run",
    );
    fails(&["bench", "--replot", "/dev/zero"], "it is a device");
    // Plain HTTP to the object store only by the operator's word, never by a URL's.
    let scratch = tempfile::tempdir_in("/var/tmp").expect("scratch");
    let out = std::process::Command::new(bin())
        .args(["mount", "s3://bucket/prefix"])
        .arg(scratch.path().join("mnt"))
        .arg("--cache")
        .arg(scratch.path().join("cache"))
        .args(["--endpoint", "http://127.0.0.1:9"])
        .env_remove("AWS_ALLOW_HTTP")
        .output()
        .expect("run snapbpf mount");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("is plain HTTP"),
        "a plain-HTTP endpoint was not refused: {stderr}"
    );
}

/// `--replot` of an interrupted run's partial results redraws tables and charts beside
/// it and leaves the directory's `results.json` (another, complete run) as it was.
#[test]
fn replot_never_overwrites_results() {
    let dir = scratch();
    let committed =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/results/full/native/results.json");
    let partial = dir.path().join("results.partial.json");
    std::fs::copy(&committed, &partial).expect("copy");
    let other = dir.path().join("results.json");
    std::fs::write(&other, b"the previous complete run").expect("write");
    ok(&["bench", "--replot", partial.to_str().expect("UTF-8")]);
    assert_eq!(
        std::fs::read(&other).expect("read"),
        b"the previous complete run"
    );
    assert!(dir.path().join("summary.md").is_file());
    assert!(dir.path().join("fig3a.svg").is_file());
}

#[test]
fn broken_snapshots_are_refused() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let good = snapshot(dir.path(), "pyaes");
    let good_s = good.to_str().expect("UTF-8");
    fails(
        &["invoke", good_s, "--strategy", "nope"],
        "unknown strategy 'nope'",
    );
    fails(
        &["invoke", good_s, "--no-pv"],
        "--no-pv applies only to the snapbpf strategy",
    );
    fails(
        &["invoke", good_s, "--strategy", "linux-nora", "--thp"],
        "--thp applies only to the linux-ra or snapbpf strategy",
    );
    fails(
        &["invoke", good_s, "--strategy", "linux-ra:no-pv"],
        "--no-pv applies only to the snapbpf strategy",
    );
    fails(
        &["invoke", good_s, "--concurrency", "0"],
        "--concurrency must be between 1 and 64",
    );
    fails(
        &["invoke", good_s, "--input", "7"],
        "takes inputs 0..2, got 7",
    );
    fails(&["snapshot", "pyaes", "--out", good_s], "already exists");

    let case = |name: &str, damage: &dyn Fn(&Path), needle: &str| {
        let d = dir.path().join(name);
        copy_snapshot(&good, &d);
        // The copy itself must be valid, so the failure comes from the damage.
        ok(&["inspect", d.to_str().expect("UTF-8")]);
        damage(&d);
        fails(&["invoke", d.to_str().expect("UTF-8"), "--cold"], needle);
    };
    case(
        "no-json",
        &|d| std::fs::remove_file(d.join("snapshot.json")).expect("rm"),
        "not a snapshot directory",
    );
    case(
        "bad-json",
        &|d| std::fs::write(d.join("snapshot.json"), b"{\"format\": ").expect("w"),
        "snapshot.json is corrupt",
    );
    case(
        "old-version",
        &|d| edit_meta(d, |m| m["version"] = 0.into()),
        "version 0",
    );
    case(
        "foreign-format",
        &|d| edit_meta(d, |m| m["format"] = "firecracker".into()),
        "'firecracker'",
    );
    case(
        "other-guest",
        &|d| edit_meta(d, |m| m["guest_digest"] = "0000000000000000".into()),
        "another guest build",
    );
    case(
        "missing-field",
        &|d| {
            edit_meta(d, |m| {
                m.as_object_mut().expect("object").remove("memory");
            })
        },
        "snapshot.json is corrupt",
    );
    case(
        "no-memory",
        &|d| std::fs::remove_file(d.join("memory")).expect("rm"),
        "memory",
    );
    case(
        "truncated-memory",
        &|d| {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(d.join("memory"))
                .expect("open");
            f.set_len(1 << 20).expect("truncate");
        },
        "does not match the snapshot: it is 1048576 bytes",
    );
    // Same size, one byte changed, mtime put back: identity is content, so it is caught.
    case(
        "edited-memory",
        &|d| flip_keeping_mtime(&d.join("memory"), 123_457),
        "memory file is not the one it was taken with",
    );
    case(
        "no-vcpu",
        &|d| std::fs::remove_file(d.join("vcpu")).expect("rm"),
        "vcpu",
    );
    case(
        "truncated-vcpu",
        &|d| {
            let bytes = std::fs::read(d.join("vcpu")).expect("read");
            std::fs::write(d.join("vcpu"), &bytes[..bytes.len() / 2]).expect("write");
        },
        "truncated",
    );
    case(
        "corrupt-vcpu",
        &|d| {
            let mut bytes = std::fs::read(d.join("vcpu")).expect("read");
            bytes[100] ^= 0xff;
            std::fs::write(d.join("vcpu"), bytes).expect("write");
        },
        "checksum mismatch",
    );
    case(
        "foreign-vcpu",
        &|d| std::fs::write(d.join("vcpu"), b"ELF binary, not a vcpu file at all....").expect("w"),
        "bad magic",
    );
    // Special files would make a reader wait forever (a FIFO, /dev/zero): refused at once.
    case(
        "vcpu-to-dev-zero",
        &|d| {
            std::fs::remove_file(d.join("vcpu")).expect("rm");
            std::os::unix::fs::symlink("/dev/zero", d.join("vcpu")).expect("symlink");
        },
        "vcpu: it is a symbolic link; snapbpf reads only regular files",
    );
    case(
        "vcpu-fifo",
        &|d| {
            std::fs::remove_file(d.join("vcpu")).expect("rm");
            let c = std::ffi::CString::new(d.join("vcpu").as_os_str().as_encoded_bytes())
                .expect("path");
            // SAFETY: mkfifo reads a NUL-terminated path we own.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        },
        "vcpu: it is a FIFO; snapbpf reads only regular files",
    );
    case(
        "huge-json",
        &|d| {
            let f = std::fs::OpenOptions::new()
                .append(true)
                .open(d.join("snapshot.json"))
                .expect("open");
            f.set_len(4 << 20).expect("grow");
        },
        "more than the 1048576 bytes",
    );
}

#[test]
fn failed_snapshot_leaves_nothing_behind() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let out = dir.path().join("too-small");
    // 4 MiB holds the image (at 2 MiB) but not pyaes's state: the guest runs out of heap
    // during init.
    let err = fails(
        &[
            "snapshot",
            "pyaes",
            "--out",
            out.to_str().expect("UTF-8"),
            "--mem-mib",
            "4",
        ],
        "function init failed",
    );
    assert!(err.contains("guest panic: memory allocation"), "{err}");
    assert!(!out.exists(), "a failed snapshot left {out:?} behind");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).expect("ls").collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    fails(
        &[
            "snapshot",
            "pyaes",
            "--out",
            out.to_str().expect("UTF-8"),
            "--mem-mib",
            "3",
        ],
        "not a non-zero multiple of 2 MiB",
    );
}

#[test]
fn kvm_unavailable_is_a_clear_error() {
    if !require_kvm() {
        return;
    }
    // Not permitted: an unprivileged user cannot open /dev/kvm (mode 0600).
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin())
        .args(["boot", "pyaes"])
        .output()
        .expect("setpriv runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot open /dev/kvm") && !stderr.contains("panicked"),
        "{stderr}"
    );
    // Absent: a mount namespace where /dev/kvm is not a KVM device.
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--", "sh", "-c"])
        .arg(format!(
            "mount --bind /dev/null /dev/kvm && exec {} boot pyaes",
            bin().display()
        ))
        .output()
        .expect("unshare runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot open /dev/kvm") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

/// Holds a `flock` on `dir` as another snapbpf would.
fn hold_lock(dir: &Path, op: libc::c_int) -> std::fs::File {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(dir).expect("open the directory");
    // A lock this test just dropped can outlive its close for a moment: a process another
    // test thread is spawning holds a copy of every descriptor from its fork to its exec
    // (close-on-exec closes it only then). So a refusal is retried briefly.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    // SAFETY: flock on a descriptor we own.
    while unsafe { libc::flock(f.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} stays locked: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    f
}

/// Recording locks a snapshot directory exclusively, restoring shares it: a second writer,
/// or a writer beside running VMs, gets a clear "busy" error instead of interleaving.
#[test]
fn a_snapshot_in_use_is_busy() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let snap = snapshot(dir.path(), "pyaes");
    let s = snap.to_str().expect("UTF-8");
    let writer = hold_lock(&snap, libc::LOCK_EX);
    fails(
        &["invoke", s],
        "is busy: another snapbpf is recording into it",
    );
    fails(
        &["record", s, "--strategy", "faasnap"],
        "is busy: another snapbpf is recording into it or restoring VMs from it",
    );
    fails(&["snapshot", "pyaes", "--out", s, "--force"], "is busy");
    drop(writer);
    let reader = hold_lock(&snap, libc::LOCK_SH);
    ok(&["invoke", s]);
    fails(&["record", s, "--strategy", "faasnap"], "is busy");
    drop(reader);
    ok(&["record", s, "--strategy", "faasnap"]);
    ok(&["invoke", s, "--strategy", "faasnap"]);
}

/// SIGINT while a snapshot is being written removes the temporary directory, says so on
/// one line and exits 130; nothing is left under the requested name.
#[test]
fn an_interrupted_snapshot_leaves_nothing_behind() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let out = dir.path().join("big");
    // 2 GiB of guest memory take seconds to write densely (and hash): long enough to
    // interrupt.
    let child = std::process::Command::new(bin())
        .args(["snapshot", "pyaes", "--mem-mib", "2048", "--out"])
        .arg(&out)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start snapshot");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let tmp_seen = loop {
        let tmp = std::fs::read_dir(dir.path())
            .expect("ls")
            .filter_map(|e| e.ok())
            .find(|e| e.file_name().to_string_lossy().starts_with(".big.tmp-"));
        if let Some(t) = tmp {
            if t.path().join("memory").exists() {
                break true;
            }
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    // SAFETY: signalling the child we started.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let output = child.wait_with_output().expect("wait");
    assert!(tmp_seen, "the snapshot never started writing memory");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.lines().last().is_some_and(
            |l| l.contains("interrupted by SIGINT; undid: removed the unfinished snapshot")
        ),
        "{stderr}"
    );
    assert!(!out.exists());
    let left: Vec<_> = std::fs::read_dir(dir.path()).expect("ls").collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// `uffd-handler --socket` never deletes what is at that path unless it is a socket.
#[test]
fn the_handler_socket_path_is_never_clobbered() {
    let dir = scratch();
    let memory = dir.path().join("memory");
    std::fs::write(&memory, vec![7u8; 1 << 20]).expect("write");
    let precious = dir.path().join("precious");
    std::fs::write(&precious, b"keep me").expect("write");
    fails(
        &[
            "uffd-handler",
            "--socket",
            precious.to_str().expect("UTF-8"),
            "--memory-file",
            memory.to_str().expect("UTF-8"),
        ],
        "exists and is not a socket; remove it or choose another path",
    );
    assert_eq!(std::fs::read(&precious).expect("read"), b"keep me");
}
