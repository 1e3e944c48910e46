//! Tenants' memory stays theirs (`docs/security.md`): each test plays another local user
//! (`nobody`), a hostile socket peer or a killed process against real snapshots, stores and
//! handlers. Each failed on the main before issue 25 (its note lists how).

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    bin, fails, flip_keeping_mtime, json, ok, require_kvm, require_root, scratch, snapshot,
    start_handler, Store, NOBODY,
};

/// `snapbpf ARGS...` as `nobody` (its groups dropped), from a copy of the binary it can
/// execute wherever this checkout lives.
fn as_nobody(scratch: &Path, args: &[&str]) -> std::process::Output {
    let exe = scratch.join("snapbpf-for-nobody");
    if !exe.exists() {
        std::fs::copy(bin(), &exe).expect("copy the binary");
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    Command::new(&exe)
        .args(args)
        .uid(NOBODY)
        .gid(NOBODY)
        .current_dir("/")
        .output()
        .expect("run as nobody")
}

/// A scratch directory others may traverse (0711) but not list, so that what decides an
/// access is the mode of the file or socket under test.
fn traversable_scratch() -> tempfile::TempDir {
    let dir = scratch();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    dir
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).expect("stat").mode() & 0o777
}

/// Every file of a snapshot (memory, machine state, metadata, every strategy's
/// recording) is 0600 in a 0700 directory; `nobody` reads none of it even when the
/// directory is opened up. (Before: `memory` and artifacts were 0644.)
#[test]
fn snapshot_files_are_owner_only() {
    if !require_kvm() || !require_root() {
        return;
    }
    let dir = traversable_scratch();
    let snap = snapshot(dir.path(), "pyaes");
    for strategy in ["snapbpf", "reap", "sabre"] {
        ok(&[
            "record",
            snap.to_str().expect("UTF-8"),
            "--strategy",
            strategy,
        ]);
    }
    assert_eq!(mode(&snap), 0o700, "the snapshot directory");
    let mut files = 0;
    for entry in std::fs::read_dir(&snap).expect("ls") {
        let path = entry.expect("entry").path();
        assert_eq!(mode(&path) & 0o077, 0, "{path:?} is {:o}", mode(&path));
        files += 1;
    }
    assert!(
        files >= 6,
        "memory, vcpu, snapshot.json and recordings: {files}"
    );
    // Even with the directory opened up, the memory itself stays closed.
    std::fs::set_permissions(&snap, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let memory = snap.join("memory");
    let read = Command::new("cat")
        .arg(&memory)
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(Stdio::null())
        .output()
        .expect("cat as nobody");
    assert!(!read.status.success(), "nobody read {memory:?}");
    assert!(
        String::from_utf8_lossy(&read.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
}

/// The store's socket is 0600 whatever the umask it was started under, so `nobody` cannot
/// even connect (before: 0777 under umask 000, and `nobody` listed the snapshots); with
/// `--allow-uid` it connects, but reaches only snapshots in directories it owns, not
/// root's (before: the store loaded any path a client named).
#[test]
fn the_store_serves_only_its_owner_and_whom_it_allows() {
    if !require_kvm() || !require_root() {
        return;
    }
    let dir = traversable_scratch();
    let snap = snapshot(dir.path(), "pyaes");
    let snap_arg = snap.to_str().expect("UTF-8");
    let socket = dir.path().join("umask000.sock");
    let sock = socket.to_str().expect("UTF-8");
    let mut loose = Command::new("sh")
        .args(["-c", "umask 000; exec \"$0\" store serve --socket \"$1\""])
        .arg(bin())
        .arg(&socket)
        .stderr(Stdio::null())
        .spawn()
        .expect("start a store under umask 000");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "the store never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(mode(&socket), 0o600, "the socket's mode under umask 000");
    ok(&["store", "add", snap_arg, "--socket", sock]);
    let listed = as_nobody(dir.path(), &["store", "list", "--socket", sock]);
    assert!(
        !listed.status.success(),
        "nobody listed the store's snapshots"
    );
    let _ = loose.kill();
    let _ = loose.wait();

    let store = Store::start_with(dir.path(), &["--allow-uid", &NOBODY.to_string()]);
    ok(&["store", "add", snap_arg, "--socket", store.sock()]);
    let listed = as_nobody(
        dir.path(),
        &["store", "list", "--socket", store.sock(), "--json"],
    );
    assert!(listed.status.success(), "an allowed uid connects");
    assert!(
        !String::from_utf8_lossy(&listed.stdout).contains("pyaes"),
        "nobody sees root's snapshot: {}",
        String::from_utf8_lossy(&listed.stdout)
    );
    let added = as_nobody(
        dir.path(),
        &["store", "add", snap_arg, "--socket", store.sock()],
    );
    assert!(!added.status.success(), "nobody loaded root's snapshot");
    let err = String::from_utf8_lossy(&added.stderr);
    assert!(err.contains("not the directory's owner"), "{err}");
    let evicted = as_nobody(
        dir.path(),
        &["store", "evict", snap_arg, "--socket", store.sock()],
    );
    assert!(!evicted.status.success(), "nobody evicted root's snapshot");
    assert!(ok(&["store", "list", "--socket", store.sock()]).contains("pyaes"));

    // Snapshots are asked for by their memory's identity, per tenant: knowing root's
    // identity gets `nobody` nothing (before: any path a client named was loaded).
    let memory: serde_json::Value =
        serde_json::from_slice(&std::fs::read(snap.join("snapshot.json")).expect("meta"))
            .expect("JSON");
    let memory = memory["memory"].to_string();
    let asked = raw_get_as_nobody(store.sock(), &memory);
    assert!(
        asked.contains("holds no snapshot with memory") && asked.ends_with("fds 0"),
        "nobody was served root's memory by its identity: {asked}"
    );
    // Its own copy, from a directory it owns, is its own entry, served back to it alone.
    let mine = dir.path().join("mine");
    std::fs::create_dir(&mine).expect("mkdir");
    for file in ["snapshot.json", "vcpu", "memory"] {
        std::fs::copy(snap.join(file), mine.join(file)).expect("copy");
    }
    let chown = |path: &Path| std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY));
    chown(&mine).expect("chown");
    for file in ["snapshot.json", "vcpu", "memory"] {
        chown(&mine.join(file)).expect("chown");
    }
    let mine_arg = mine.to_str().expect("UTF-8");
    let added = as_nobody(
        dir.path(),
        &["store", "add", mine_arg, "--socket", store.sock()],
    );
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let asked = raw_get_as_nobody(store.sock(), &memory);
    assert!(
        asked.contains(&format!("\"dir\":\"{mine_arg}\"")) && asked.ends_with("fds 1"),
        "nobody is served its own copy: {asked}"
    );
    let listed = ok(&["store", "list", "--socket", store.sock()]);
    assert_eq!(
        listed.lines().filter(|l| !l.trim().is_empty()).count(),
        2,
        "two tenants, two entries: {listed}"
    );
    // A forged verification cache does not make the store hold other content under an
    // identity: it hashes what it copies.
    let evicted = as_nobody(
        dir.path(),
        &["store", "evict", mine_arg, "--socket", store.sock()],
    );
    assert!(evicted.status.success());
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(mine.join("memory"))
            .expect("open");
        f.write_all_at(b"forged", 4096 * 7).expect("forge");
    }
    let meta = std::fs::metadata(mine.join("memory")).expect("stat");
    let identity: snapbpf_store::FileIdentity = serde_json::from_str(&memory).expect("identity");
    let forged = snapbpf_store::verify::vouch(&[snapbpf_store::verify::Vouched {
        name: "memory".into(),
        size: meta.size(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        inode: meta.ino(),
        dev: meta.dev(),
        identity,
    }]);
    std::fs::write(mine.join(".snapbpf-verified"), forged).expect("forge the cache");
    let added = as_nobody(
        dir.path(),
        &["store", "add", mine_arg, "--socket", store.sock()],
    );
    let err = String::from_utf8_lossy(&added.stderr);
    assert!(
        !added.status.success() && err.contains("its digest is"),
        "the store took a forged verification cache's word: {err}"
    );
    store.stop();
}

/// Sends a raw `get` by memory identity (JSON) to the store at `socket` as `nobody`;
/// returns the reply line and how many descriptors came with it (`... fds N`).
fn raw_get_as_nobody(socket: &str, memory: &str) -> String {
    const GET: &str = r#"
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall((json.dumps({"op": "get", "memory": json.loads(sys.argv[2])}) + "\n").encode())
msg, anc, _, _ = s.recvmsg(1 << 20, socket.CMSG_SPACE(4))
print(msg.decode().strip(), "fds", len(anc))
"#;
    let out = Command::new("python3")
        .args(["-c", GET, socket, memory])
        .uid(NOBODY)
        .gid(NOBODY)
        .current_dir("/")
        .output()
        .expect("python3 as nobody");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A second store on a live store's socket refuses to start and leaves the first serving
/// (before: it deleted the first's socket and took over, orphaning its memfds).
#[test]
fn a_second_server_does_not_orphan_a_live_one() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let snap = snapshot(dir.path(), "pyaes");
    let store = Store::start(dir.path(), "1G");
    ok(&[
        "store",
        "add",
        snap.to_str().expect("UTF-8"),
        "--socket",
        store.sock(),
    ]);
    fails(
        &["store", "serve", "--socket", store.sock()],
        "another server is listening on",
    );
    assert!(ok(&["store", "list", "--socket", store.sock()]).contains("pyaes"));
    let handler_snap = snap.to_str().expect("UTF-8");
    fails(
        &[
            "uffd-handler",
            "--socket",
            store.sock(),
            "--snapshot",
            handler_snap,
        ],
        "another server is listening on",
    );
    store.stop();
}

/// A socket bound by another user (any user who can write the socket's directory can bind
/// it first) is not trusted by the store's client nor by the VMM handing its memory to a
/// handler (before: both talked to whoever listened).
#[test]
fn clients_refuse_a_server_of_another_user() {
    if !require_kvm() || !require_root() {
        return;
    }
    let dir = traversable_scratch();
    let snap = snapshot(dir.path(), "pyaes");
    let snap_arg = snap.to_str().expect("UTF-8");
    ok(&["record", snap_arg, "--strategy", "reap"]);
    let theirs = dir.path().join("theirs");
    std::fs::create_dir(&theirs).expect("mkdir");
    std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOBODY)).expect("chown");
    let socket = theirs.join("squat.sock");
    let mut squatter = Command::new("python3")
        .args([
            "-c",
            "import socket,sys,time\n\
             s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(16)\n\
             conns=[]\n\
             while True: conns.append(s.accept())",
        ])
        .arg(&socket)
        .uid(NOBODY)
        .gid(NOBODY)
        .spawn()
        .expect("a server as nobody");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "the squatter never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let sock = socket.to_str().expect("UTF-8");
    fails(&["store", "list", "--socket", sock], "runs as uid 65534");
    fails(
        &[
            "invoke",
            snap_arg,
            "--strategy",
            "reap",
            "--uffd-handler",
            sock,
        ],
        "runs as uid 65534",
    );
    let _ = squatter.kill();
    let _ = squatter.wait();
}

/// A handler with every session slot taken refuses a VM at once with a clear error
/// (before: it accepted, said nothing, and the VMM ran the guest unchecked on the pages
/// of the snapshot the handler served, `html_serving`'s for a `pyaes` VM, until it
/// faulted).
#[test]
fn a_busy_handler_refuses_at_once() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let served = snapshot(dir.path(), "html_serving");
    let snap = snapshot(dir.path(), "pyaes");
    let socket = dir.path().join("busy.sock");
    let _handler = start_handler(&socket, &["--snapshot".as_ref(), served.as_os_str()]);
    // Take every slot: each idle connection holds a session until its VMM message times
    // out (10 s).
    let idle: Vec<_> = (0..snapbpf_uffd::server::MAX_CONCURRENT_SESSIONS)
        .map(|_| std::os::unix::net::UnixStream::connect(&socket).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    fails(
        &[
            "invoke",
            snap.to_str().expect("UTF-8"),
            "--strategy",
            "reap",
            "--uffd-handler",
            socket.to_str().expect("UTF-8"),
        ],
        "the handler is busy",
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "refused at once, not after {:?}",
        started.elapsed()
    );
    drop(idle);
}

/// `snapshot --force` replaces a snapshot in one atomic exchange: killed at any moment, the
/// old snapshot or the new one is there, whole. The temporaries of killed writes are
/// removed by the next one (before: the old one was deleted before the new one was renamed
/// in, and temporaries stayed forever).
#[test]
fn snapshot_force_is_atomic_and_cleans_up_after_killed_writes() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let snap = snapshot(dir.path(), "pyaes");
    let snap_arg = snap.to_str().expect("UTF-8");
    // A temporary left by a process that is gone.
    let mut gone = Command::new("true").spawn().expect("true");
    let dead_pid = gone.id();
    gone.wait().expect("wait");
    let stale = dir.path().join(format!(".pyaes.tmp-{dead_pid}"));
    std::fs::create_dir(&stale).expect("mkdir");
    std::fs::write(stale.join("memory"), vec![0u8; 1 << 20]).expect("write");
    for delay_ms in [200u64, 600, 1200, 2500] {
        let mut child = Command::new(bin())
            .args(["snapshot", "pyaes", "--out", snap_arg, "--force"])
            .stderr(Stdio::null())
            .spawn()
            .expect("snapshot --force");
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        let report = json(&["inspect", snap_arg]);
        assert_eq!(
            report["snapshot"]["function"].as_str(),
            Some("pyaes"),
            "after SIGKILL at {delay_ms} ms: {report}"
        );
    }
    ok(&["snapshot", "pyaes", "--out", snap_arg, "--force"]);
    ok(&["verify", snap_arg]);
    let leftovers: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".pyaes."))
        })
        .collect();
    assert!(leftovers.is_empty(), "temporaries left: {leftovers:?}");
}

#[test]
fn a_memory_file_swapped_in_after_its_check_is_never_restored() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let snap = snapshot(dir.path(), "pyaes");
    let opened = snapbpf::snapshot::open(&snap).expect("open the snapshot");
    let memory = opened.memory_path();
    let reopen = || std::fs::File::open(&memory).expect("open memory");
    assert!(opened.confirm_memory(&reopen()).is_ok(), "the checked file");
    // Between the check and the restore's open, the owner (the only one who can write the
    // 0700 directory) renames another file into place: same size, one byte different.
    let other = dir.path().join("other-memory");
    std::fs::copy(&memory, &other).expect("copy");
    flip_keeping_mtime(&other, 5 << 20);
    std::fs::rename(&other, &memory).expect("swap");
    let refused = opened
        .confirm_memory(&reopen())
        .expect_err("a swapped file");
    assert!(
        refused.to_string().contains("replaced or changed"),
        "{refused}"
    );
    // The restore itself refuses it, before any guest runs on it.
    let restored = snapbpf::strategy::registry::baseline()
        .build()
        .restore(&opened);
    let Err(err) = restored else {
        panic!("the restore took the swapped file");
    };
    assert!(err.to_string().contains("replaced or changed"), "{err}");
}

/// The pids of `snapbpf __worker` processes whose parent is `parent`.
fn workers_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("ls /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !cmdline.split(|&b| b == 0).any(|a| a == b"__worker") {
            continue;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Killing the launcher kills its VMs (before: both workers of `invoke --concurrency 2`
/// ran on for ~10 s under init, their directory lock released under them).
#[test]
fn killing_the_launcher_kills_its_vms() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let snap = snapshot(dir.path(), "bert");
    let mut launcher = Command::new(bin())
        .args([
            "invoke",
            snap.to_str().expect("UTF-8"),
            "--strategy",
            "linux-nora",
            "--concurrency",
            "2",
            "--cold",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("invoke");
    let deadline = Instant::now() + Duration::from_secs(30);
    let workers = loop {
        let w = workers_of(launcher.id());
        if w.len() == 2 {
            break w;
        }
        assert!(Instant::now() < deadline, "the workers never started");
        std::thread::sleep(Duration::from_millis(5));
    };
    launcher.kill().expect("SIGKILL the launcher");
    launcher.wait().expect("wait");
    let deadline = Instant::now() + Duration::from_secs(2);
    while workers.iter().any(|&w| alive(w)) {
        assert!(
            Instant::now() < deadline,
            "workers {workers:?} outlived their launcher"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
