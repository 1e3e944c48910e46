//! Snapshots through a real S3-compatible server (`s3s-fs` on loopback) and a real FUSE
//! mount, restored on real KVM: fresh hosts restore to the fresh boot's checksum, pushes
//! are content-addressed and idempotent, and damaged, missing or unreachable objects fail
//! reads instead of serving wrong pages, with the mount still usable.

mod common;

use common::*;

fn url(name: &str) -> String {
    format!("s3://{BUCKET}/fleet/{name}")
}

fn location() -> String {
    format!("s3://{BUCKET}/fleet")
}

/// Snapshots and pushes `function` (with SnapBPF's working set recorded).
fn pushed(server: &S3Server, dir: &std::path::Path, function: &str) -> serde_json::Value {
    let snap = snapshot(dir, function);
    let s = snap.to_str().expect("UTF-8");
    ok(&["record", s, "--strategy", "snapbpf"]);
    server.json(&["push", s, &url(function)])
}

fn invoke_on(
    server: &S3Server,
    dir: &str,
    strategy: &str,
    input: usize,
    vms: usize,
    extra: &[&str],
) -> serde_json::Value {
    let (input, vms) = (input.to_string(), vms.to_string());
    let mut args = vec![
        "invoke",
        dir,
        "--strategy",
        strategy,
        "--cold",
        "--input",
        &input,
        "--concurrency",
        &vms,
    ];
    args.extend_from_slice(extra);
    server.json(&args)
}

/// Two "hosts" (two mounts, two chunk caches) restore every input of two functions, one
/// VM and ten, under `snapbpf` and `linux-ra`, to the fresh boot's checksum; `invoke`
/// takes the `s3://` URL directly; ten VMs fetch each chunk once.
#[test]
fn fresh_hosts_restore_from_the_object_store() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let Some(server) = S3Server::start(dir.path()) else {
        return;
    };
    let functions = ["pyaes", "heapcheck"];
    let pushes: Vec<_> = functions
        .iter()
        .map(|f| pushed(&server, dir.path(), f))
        .collect();
    let host_a = Mount::start(
        &server,
        &location(),
        &dir.path().join("host-a"),
        &dir.path().join("cache-a"),
        &dir.path().join("host-a.json"),
    );
    for (f, push) in functions.iter().zip(&pushes) {
        let want = fresh_checksums(f);
        let on_mount = host_a.dir.join(f);
        let on_mount = on_mount.to_str().expect("UTF-8");
        for strategy in ["snapbpf", "linux-ra"] {
            for (input, want) in want.iter().enumerate() {
                for vms in [1, 10] {
                    let r = invoke_on(&server, on_mount, strategy, input, vms, &[]);
                    assert_eq!(checksums(&r), vec![want.clone(); vms], "{f} {strategy}");
                    assert!(
                        r["fetch"].is_object(),
                        "a mounted restore reports its fetches"
                    );
                }
            }
        }
        // Host B: a fresh cache, the URL given to invoke, ten VMs at once.
        let cache_b = dir.path().join(format!("cache-b-{f}"));
        let r = invoke_on(
            &server,
            &url(f),
            "snapbpf",
            1,
            10,
            &["--cache", cache_b.to_str().expect("UTF-8")],
        );
        assert_eq!(checksums(&r), vec![want[1].clone(); 10], "{f} from the URL");
        let requests = r["fetch"]["requests"].as_u64().expect("requests");
        let distinct = push["unique_chunks"].as_u64().expect("unique");
        assert!(
            requests > 0 && requests <= distinct,
            "{f}: ten VMs fetched {requests} chunks, the snapshot has {distinct} distinct: each at most once ({})",
            r["fetch"]
        );
        assert!(r["fetch"]["bytes"].as_u64() > Some(0));
    }
    assert_eq!(host_a.stats()["failed_reads"], 0);
    let log = host_a.stop();
    assert!(log.contains("unmounted"), "{log}");
    let stats: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("host-a.json")).expect("--stats"))
            .expect("JSON");
    assert!(stats["fetch"]["requests"].as_u64() > Some(0), "{stats}");
}

/// A second push uploads nothing; a re-recorded snapshot uploads only its changed chunks;
/// a push cut short leaves no manifest, and the next one uploads only what is missing.
#[test]
fn pushes_are_content_addressed_and_idempotent() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let Some(server) = S3Server::start(dir.path()) else {
        return;
    };
    let first = pushed(&server, dir.path(), "pyaes");
    assert_eq!(first["uploaded"], first["unique_chunks"], "{first}");
    assert_eq!(first["present"], 0);
    assert!(
        first["zero_chunks"].as_u64() > Some(0),
        "zero chunks are not stored"
    );
    let snap = dir.path().join("pyaes");
    let s = snap.to_str().expect("UTF-8");
    let again = server.json(&["push", s, &url("pyaes")]);
    assert_eq!(again["uploaded"], 0, "{again}");
    assert_eq!(again["manifest_written"], false);
    // Recording the other input merges into snapbpf.ws: only its chunk changes.
    ok(&["record", s, "--strategy", "snapbpf", "--input", "1"]);
    let rerecorded = server.json(&["push", s, &url("pyaes")]);
    assert_eq!(rerecorded["uploaded"], 1, "{rerecorded}");
    assert_eq!(rerecorded["manifest_written"], true);
    // The same snapshot under another name shares every chunk.
    let copy = server.json(&["push", s, &url("pyaes-copy")]);
    assert_eq!(copy["uploaded"], 0, "{copy}");

    // A push killed midway: chunks, but no manifest naming them.
    let image = snapshot(dir.path(), "image");
    let mut push = std::process::Command::new(bin())
        .args(["push", image.to_str().expect("UTF-8"), &url("image")])
        .envs(server.env())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("push");
    let chunks = server.object("fleet/chunks");
    let before = std::fs::read_dir(&chunks).map_or(0, |d| d.count());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::fs::read_dir(&chunks).map_or(0, |d| d.count()) < before + 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the push uploaded nothing"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    push.kill().expect("kill the push");
    push.wait().expect("wait");
    let manifest = server.object("fleet/snapshots/image/manifest");
    assert!(
        !manifest.exists(),
        "a push cut short left a manifest (it finished too fast to be cut short?)"
    );
    let resumed = server.json(&["push", image.to_str().expect("UTF-8"), &url("image")]);
    assert!(resumed["present"].as_u64() >= Some(3), "{resumed}");
    assert!(manifest.exists());
}

/// A corrupt chunk, a missing chunk, a corrupt manifest and a store that went away: reads
/// fail with EIO and a logged cause, restores fail with a one-line error (never a wrong
/// checksum, never a hang), and the mount keeps serving everything else.
#[test]
fn bad_objects_fail_reads_and_the_mount_stays_usable() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let Some(mut server) = S3Server::start(dir.path()) else {
        return;
    };
    let pyaes = pushed(&server, dir.path(), "pyaes");
    pushed(&server, dir.path(), "gzip");
    pushed(&server, dir.path(), "heapcheck");
    let want_gzip = fresh_checksums("gzip");
    let want_heap = fresh_checksums("heapcheck");
    // pyaes's memory: damage one of its chunks and remove another.
    let manifest = std::fs::read(server.object("fleet/snapshots/pyaes/manifest")).expect("read");
    let text = String::from_utf8_lossy(&manifest).into_owned();
    let digests: Vec<String> = text
        .match_indices("\"tree_sha256\":\"")
        .map(|(i, m)| text[i + m.len()..i + m.len() + 64].to_string())
        .filter(|d| server.object(&format!("fleet/chunks/{d}")).exists())
        .collect();
    assert!(digests.len() > 4, "{pyaes}");
    let damaged = server.object(&format!("fleet/chunks/{}", digests[2]));
    let mut bytes = std::fs::read(&damaged).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&damaged, &bytes).expect("damage a chunk");
    std::fs::remove_file(server.object(&format!("fleet/chunks/{}", digests[3])))
        .expect("remove a chunk");
    // And one is far larger than any chunk can be: refused before its body is read.
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(server.object(&format!("fleet/chunks/{}", digests[4])))
        .and_then(|f| f.set_len(200 << 20))
        .expect("inflate a chunk");
    // A third snapshot's manifest is garbage.
    std::fs::write(
        server.object("fleet/snapshots/heapcheck/manifest"),
        b"not a manifest",
    )
    .expect("damage a manifest");

    let mount = Mount::start(
        &server,
        &location(),
        &dir.path().join("mnt"),
        &dir.path().join("cache"),
        &dir.path().join("stats.json"),
    );
    assert_eq!(mount.stats()["bad_manifests"], 1, "{}", mount.stats());
    assert!(!mount.dir.join("heapcheck").exists());
    let memory = mount.dir.join("pyaes/memory");
    let read = std::fs::read(&memory);
    assert_eq!(
        read.err().and_then(|e| e.raw_os_error()),
        Some(libc::EIO),
        "reading past a bad chunk fails with EIO"
    );
    // Ask for every chunk, so the log names each kind of damage whatever order the
    // restores below read in (the default restore stops at the first chunk it cannot get).
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::open(&memory).expect("open the memory file");
        let len = file.metadata().expect("stat").len();
        let mut page = vec![0u8; 4096];
        for offset in (0..len).step_by(64 << 10) {
            let _ = file.read_at(&mut page, offset);
        }
    }
    let on_mount = |f: &str| mount.dir.join(f).to_str().expect("UTF-8").to_string();
    for strategy in ["snapbpf", "linux-ra"] {
        let out = server.run(&[
            "invoke",
            &on_mount("pyaes"),
            "--strategy",
            strategy,
            "--cold",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{strategy}: {stderr}");
        assert!(
            stderr.contains("could not be faulted in"),
            "{strategy}: {stderr}"
        );
        assert!(!stderr.contains("panicked"));
    }
    let log = std::fs::read_to_string(&mount.log).unwrap_or_default();
    assert!(
        log.contains("CRC mismatch") || log.contains("holds other content"),
        "{log}"
    );
    assert!(log.contains("does not exist"), "{log}");
    assert!(log.contains("refusing to read it"), "{log}");
    // The mount serves everything else.
    let r = invoke_on(&server, &on_mount("gzip"), "snapbpf", 0, 1, &[]);
    assert_eq!(checksums(&r), vec![want_gzip[0].clone()]);

    // Snapshots pushed after the mount appear.
    let again = dir.path().join("again");
    std::fs::create_dir(&again).expect("mkdir");
    let repush = pushed(&server, &again, "heapcheck");
    assert!(repush["manifest_written"] == true);
    assert!(mount.dir.join("heapcheck").is_dir());

    // The store goes away: a second host (nothing cached) fails the restore that needs
    // it, cleanly and soon, and restores once it is back.
    let host_b = Mount::start(
        &server,
        &location(),
        &dir.path().join("mnt-b"),
        &dir.path().join("cache-b"),
        &dir.path().join("stats-b.json"),
    );
    let heap = host_b.dir.join("heapcheck");
    let heap = heap.to_str().expect("UTF-8");
    server.stop();
    let started = std::time::Instant::now();
    let out = server.run(&["invoke", heap, "--strategy", "snapbpf", "--cold"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("error: ")),
        "{stderr}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(120),
        "no hang"
    );
    server.restart();
    let r = invoke_on(&server, heap, "snapbpf", 1, 1, &[]);
    assert_eq!(checksums(&r), vec![want_heap[1].clone()]);
    host_b.stop();
    mount.stop();
}

/// Another local user cannot read a mounted snapshot (its memory is a tenant's): the mount
/// serves only the user who mounted it, whatever the files' modes say. (This held before
/// issue 25 through fuser's session ACL; the test pins it down.)
#[test]
fn another_user_cannot_read_the_mount() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    if !require_kvm() || !require_root() {
        return;
    }
    let dir = scratch();
    // Others may traverse the scratch directory: what refuses them must be the mount.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    let Some(server) = S3Server::start(dir.path()) else {
        return;
    };
    pushed(&server, dir.path(), "pyaes");
    let mount = Mount::start(
        &server,
        &location(),
        &dir.path().join("mnt"),
        &dir.path().join("cache"),
        &dir.path().join("stats.json"),
    );
    let meta = mount.dir.join("pyaes/snapshot.json");
    assert!(std::fs::read(&meta).is_ok(), "its owner reads it");
    let nobody_reads = |target: &std::path::Path| {
        std::process::Command::new("cat")
            .arg(target)
            .uid(NOBODY)
            .gid(NOBODY)
            .stdout(std::process::Stdio::null())
            .output()
            .expect("cat as nobody")
            .status
            .success()
    };
    let memory = mount.dir.join("pyaes/memory");
    for target in [&meta, &memory] {
        assert!(!nobody_reads(target), "nobody read {target:?}");
    }
    let mode = std::fs::metadata(&memory)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o400, "owner-only modes by default");
    mount.stop();
    // A group named by the operator reads, by the modes the kernel checks; others do not.
    let shared = Mount::start_with(
        &server,
        &location(),
        &dir.path().join("mnt2"),
        &dir.path().join("cache"),
        &dir.path().join("stats2.json"),
        &["--group", &NOBODY.to_string()],
    );
    let memory = shared.dir.join("pyaes/memory");
    let meta = std::fs::metadata(&memory).expect("stat");
    assert_eq!(meta.permissions().mode() & 0o777, 0o440);
    assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), NOBODY);
    assert!(nobody_reads(&memory), "the named group reads the mount");
    let other = std::process::Command::new("cat")
        .arg(&memory)
        .uid(NOBODY)
        .gid(NOBODY - 1)
        .stdout(std::process::Stdio::null())
        .output()
        .expect("cat as another group");
    assert!(!other.status.success(), "a user outside the group read it");
    shared.stop();
}
