//! Helpers shared by the CLI's integration tests: they drive the real `snapbpf` binary
//! against real KVM.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Whether the tests can run here. Without KVM they are skipped loudly, except under
/// `CI=true`, where a missing capability is a failure.
pub fn require_kvm() -> bool {
    let usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if usable {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("/dev/kvm is not usable and CI=true: KVM tests must run in CI (run as root on a KVM host)");
    }
    eprintln!("\n!!!!!!!! SKIPPED: /dev/kvm is missing or not permitted; KVM tests did not run !!!!!!!!\n");
    false
}

/// The uid tests play another local user as.
pub const NOBODY: u32 = 65534;

/// Whether a test can play another user: it needs root (as the KVM tests do anyway).
/// Skipped loudly otherwise, except under `CI=true`, where it fails.
pub fn require_root() -> bool {
    if snapbpf_os::access::effective_uid() == 0 {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true: tests as another user must run as root"
    );
    eprintln!("\n!!!!!!!! SKIPPED: not root; tests as another user did not run !!!!!!!!\n");
    false
}

/// Path of the binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_snapbpf"))
}

/// Runs `snapbpf args...`.
pub fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("cannot run the snapbpf binary")
}

/// Runs `snapbpf args...`, asserts success, returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "snapbpf {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("stdout is UTF-8")
}

/// Runs `snapbpf args... --json` and parses the output.
pub fn json(args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = ok(&all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON from {args:?}: {e}\n{out}"))
}

/// Asserts that `snapbpf args...` fails cleanly: exit code 1, no panic, and a last stderr
/// line `error: ...` that contains `needle`.
pub fn fails(args: &[&str], needle: &str) -> String {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "snapbpf {args:?}: expected exit 1, stderr:\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "snapbpf {args:?} panicked:\n{stderr}"
    );
    let last = stderr.lines().last().unwrap_or_default().to_string();
    assert!(
        last.starts_with("error: "),
        "snapbpf {args:?}: last stderr line is not an error: {stderr}"
    );
    assert!(
        last.contains(needle),
        "snapbpf {args:?}: error '{last}' does not mention '{needle}'"
    );
    last
}

/// The Firecracker binary, or `None` (after a loud message; a failure under `CI=true`).
pub fn firecracker() -> Option<PathBuf> {
    if !require_kvm() {
        return None;
    }
    let found = std::env::var_os("FIRECRACKER")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join("firecracker"))
                    .find(|p| p.is_file())
            })
        });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "no Firecracker ($FIRECRACKER or on PATH) and CI=true: the Firecracker tests must run"
        );
        eprintln!("\n!!!!!!!! SKIPPED: no Firecracker ($FIRECRACKER or on PATH) !!!!!!!!\n");
    }
    found
}

/// A scratch directory on the real disk (not tmpfs: page-cache behaviour matters).
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("snapbpf-test-")
        .tempdir_in("/var/tmp")
        .expect("cannot create a scratch directory in /var/tmp")
}

/// Takes a snapshot of `function` into `dir/name`.
pub fn snapshot(dir: &Path, function: &str) -> PathBuf {
    let out = dir.join(function);
    ok(&[
        "snapshot",
        function,
        "--out",
        out.to_str().expect("UTF-8 path"),
    ]);
    out
}

/// Checksum of the first run of an `invoke --json` report.
pub fn checksums(report: &serde_json::Value) -> Vec<String> {
    report["runs"]
        .as_array()
        .expect("runs is an array")
        .iter()
        .map(|r| r["checksum"].as_str().expect("checksum").to_string())
        .collect()
}

/// Flips one byte of `path` in place and puts its modification time back.
pub fn flip_keeping_mtime(path: &Path, at: u64) {
    let mtime = std::fs::metadata(path)
        .expect("stat")
        .modified()
        .expect("mtime");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    let mut byte = [0u8];
    use std::os::unix::fs::FileExt;
    f.read_exact_at(&mut byte, at).expect("read");
    f.write_all_at(&[!byte[0]], at).expect("write");
    f.set_modified(mtime).expect("put the mtime back");
}

/// A running `snapbpf uffd-handler`, killed on drop.
pub struct Handler(std::process::Child);

/// Starts `snapbpf uffd-handler --socket SOCKET ARGS...` and waits until it listens.
pub fn start_handler(socket: &Path, args: &[&std::ffi::OsStr]) -> Handler {
    let handler = Handler(
        Command::new(bin())
            .arg("uffd-handler")
            .arg("--socket")
            .arg(socket)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the handler"),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !socket.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the handler never listened on {socket:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    handler
}

impl Drop for Handler {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The checksum of a freshly booted VM running `function`, for each of its inputs.
pub fn fresh_checksums(function: &str) -> Vec<String> {
    let inputs = snapbpf_functions::info(function)
        .expect("function exists")
        .inputs;
    (0..inputs)
        .map(|i| {
            let r = json(&["boot", function, "--input", &i.to_string()]);
            r["checksum"].as_str().expect("checksum").to_string()
        })
        .collect()
}

/// A running `snapbpf store serve`, killed on drop if still running.
pub struct Store {
    /// The store process.
    pub child: std::process::Child,
    /// Its socket.
    pub socket: PathBuf,
    /// Where its standard error goes.
    pub log: PathBuf,
}

impl Store {
    /// Starts a store with `capacity` listening in `dir`.
    pub fn start(dir: &Path, capacity: &str) -> Self {
        Self::start_with(dir, &["--capacity", capacity])
    }

    /// Starts `snapbpf store serve ARGS...` listening in `dir`.
    pub fn start_with(dir: &Path, args: &[&str]) -> Self {
        let socket = dir.join("store.sock");
        let log = dir.join("store.log");
        let child = Command::new(bin())
            .args(["store", "serve"])
            .args(args)
            .arg("--socket")
            .arg(&socket)
            .stderr(std::fs::File::create(&log).expect("create the store's log"))
            .spawn()
            .expect("start the store");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !socket.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the store never listened: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Self { child, socket, log }
    }

    /// Its socket, as an argument.
    pub fn sock(&self) -> &str {
        self.socket.to_str().expect("UTF-8")
    }

    /// Stops it with SIGTERM and checks that it exits cleanly, removes its socket and
    /// releases every memfd; returns its log.
    pub fn stop(mut self) -> String {
        // SAFETY: kill(2) on the child we started.
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        assert_eq!(rc, 0);
        let status = self.child.wait().expect("wait");
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        assert!(status.success(), "{status}: {log}");
        assert!(!self.socket.exists(), "socket removed");
        assert!(log.contains("0 memfds left open"), "{log}");
        log
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bytes of `path` in pages that are not all zeros: what the store holds of a memory
/// file (computed here independently of the store).
pub fn data_bytes(path: &Path) -> u64 {
    let bytes = std::fs::read(path).expect("read the memory file");
    bytes
        .chunks(4096)
        .filter(|page| page.iter().any(|&b| b != 0))
        .count() as u64
        * 4096
}

/// The shmem transparent-huge-page setting switched to `advise` for one test, put back on
/// drop.
pub struct ShmemThp {
    old: String,
}

const SHMEM_THP: &str = "/sys/kernel/mm/transparent_hugepage/shmem_enabled";

/// `advise` for shmem THP (root), or `None` (after a loud message; a failure under
/// `CI=true`) where the host has none.
pub fn shmem_thp_advise() -> Option<ShmemThp> {
    let unavailable = |why: String| {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("shmem transparent huge pages unavailable and CI=true: {why}");
        }
        eprintln!("\n!!!!!!!! SKIPPED: shmem transparent huge pages unavailable: {why} !!!!!!!!\n");
        None
    };
    let text = match std::fs::read_to_string(SHMEM_THP) {
        Ok(t) => t,
        Err(e) => return unavailable(format!("{SHMEM_THP}: {e}")),
    };
    let old = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))
        .unwrap_or("never")
        .to_string();
    if let Err(e) = std::fs::write(SHMEM_THP, "advise") {
        return unavailable(format!("cannot write {SHMEM_THP}: {e}"));
    }
    Some(ShmemThp { old })
}

impl Drop for ShmemThp {
    fn drop(&mut self) {
        let _ = std::fs::write(SHMEM_THP, &self.old);
    }
}

/// Huge pages added to the kernel's pool for one test, given back on drop. Tests of one
/// file that need them hold one at a time (the pool size is read, then written).
pub struct HugePages {
    added: u64,
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

pub fn meminfo(field: &str) -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    info.lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Makes `n` free 2 MiB huge pages available, growing the pool if needed (root). `None`
/// (after a loud message; a failure under `CI=true`) where the host cannot.
pub fn reserve_huge_pages(n: u64) -> Option<HugePages> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let guard = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let unavailable = |why: String| {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("2 MiB huge pages unavailable and CI=true: {why}");
        }
        eprintln!("\n!!!!!!!! SKIPPED: 2 MiB huge pages unavailable: {why} !!!!!!!!\n");
        None
    };
    if meminfo("Hugepagesize:") != (2 << 20) >> 10 {
        return unavailable("the default huge page size is not 2 MiB".into());
    }
    let free = meminfo("HugePages_Free:");
    let added = n.saturating_sub(free);
    if added > 0 {
        let total = meminfo("HugePages_Total:");
        if let Err(e) = std::fs::write(NR_HUGEPAGES, (total + added).to_string()) {
            return unavailable(format!("cannot grow {NR_HUGEPAGES}: {e}"));
        }
    }
    let pages = HugePages {
        added,
        _one_at_a_time: guard,
    };
    let free = meminfo("HugePages_Free:");
    if free < n {
        drop(pages);
        return unavailable(format!("{free} of {n} free after growing the pool"));
    }
    Some(pages)
}

impl Drop for HugePages {
    fn drop(&mut self) {
        if self.added > 0 {
            let total = meminfo("HugePages_Total:");
            let _ = std::fs::write(NR_HUGEPAGES, total.saturating_sub(self.added).to_string());
        }
    }
}

/// An S3-compatible server (`s3s-fs`, installed by `scripts/setup.sh`) on loopback,
/// serving one bucket from a directory; killed on drop.
pub struct S3Server {
    child: Option<std::process::Child>,
    /// The directory it stores objects in (`root/BUCKET/KEY`).
    pub root: PathBuf,
    /// Its port.
    pub port: u16,
}

/// The bucket [`S3Server`] serves.
pub const BUCKET: &str = "fleet";

fn s3s_fs() -> Option<PathBuf> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    let installed = cargo_home.join("bin/s3s-fs");
    if installed.is_file() {
        return Some(installed);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("s3s-fs"))
            .find(|p| p.is_file())
    })
}

impl S3Server {
    /// Starts a server storing objects under `dir/s3`. `None` (after a loud message; a
    /// failure under `CI=true`) where `s3s-fs` or FUSE is missing.
    pub fn start(dir: &Path) -> Option<Self> {
        let unavailable = |why: String| {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{why} and CI=true: the fleet tests must run in CI (scripts/setup.sh installs s3s-fs)");
            }
            eprintln!("\n!!!!!!!! SKIPPED: {why} !!!!!!!!\n");
            None
        };
        let Some(bin) = s3s_fs() else {
            return unavailable("s3s-fs (the tests' S3 server) is not installed".into());
        };
        if std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .is_err()
        {
            return unavailable("/dev/fuse is missing or not permitted".into());
        }
        let root = dir.join("s3");
        std::fs::create_dir_all(root.join(BUCKET)).expect("create the bucket");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut server = Self {
            child: None,
            root,
            port,
        };
        server.resume(&bin);
        Some(server)
    }

    fn resume(&mut self, bin: &Path) {
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", "snapbpf", "--secret-key", "snapbpf-secret"])
            .arg(&self.root)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "s3s-fs never listened"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Kills the server (the store "goes away").
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and directory.
    pub fn restart(&mut self) {
        self.stop();
        let bin = s3s_fs().expect("s3s-fs");
        self.resume(&bin);
    }

    /// The environment a client needs.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "snapbpf".into()),
            ("AWS_SECRET_ACCESS_KEY", "snapbpf-secret".into()),
            ("AWS_REGION", "us-east-1".into()),
            // The server is on loopback: plain HTTP, by the operator's explicit word.
            ("AWS_ALLOW_HTTP", "true".into()),
            (
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
        ]
    }

    /// `snapbpf args...` with the server's environment.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .envs(self.env())
            .output()
            .expect("cannot run the snapbpf binary")
    }

    /// `snapbpf args... --json` with the server's environment, asserting success.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.run(&all);
        assert!(
            out.status.success(),
            "snapbpf {all:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON")
    }

    /// The file holding object `key` of the bucket.
    pub fn object(&self, key: &str) -> PathBuf {
        self.root.join(BUCKET).join(key)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running `snapbpf mount`, unmounted on drop.
pub struct Mount {
    child: Option<std::process::Child>,
    /// The mountpoint.
    pub dir: PathBuf,
    /// Its log (standard error).
    pub log: PathBuf,
}

impl Mount {
    /// Mounts `url` at `dir` with the chunk cache `cache`, waiting until it serves.
    pub fn start(server: &S3Server, url: &str, dir: &Path, cache: &Path, stats: &Path) -> Self {
        Self::start_with(server, url, dir, cache, stats, &[])
    }

    /// As [`Mount::start`], with more arguments to `mount`.
    pub fn start_with(
        server: &S3Server,
        url: &str,
        dir: &Path,
        cache: &Path,
        stats: &Path,
        extra: &[&str],
    ) -> Self {
        std::fs::create_dir_all(dir).expect("mountpoint");
        let log = dir.with_extension("log");
        let child = Command::new(bin())
            .args(["mount", url])
            .arg(dir)
            .arg("--cache")
            .arg(cache)
            .arg("--stats")
            .arg(stats)
            .args(extra)
            .envs(server.env())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start the mount");
        let mount = Self {
            child: Some(child),
            dir: dir.to_path_buf(),
            log,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !dir.join(".stats").exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the mount never served: {}",
                std::fs::read_to_string(&mount.log).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        mount
    }

    /// Its counters (`.stats`).
    pub fn stats(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.dir.join(".stats")).expect(".stats"))
            .expect("JSON")
    }

    /// Unmounts with SIGTERM and checks a clean exit.
    pub fn stop(mut self) -> String {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on the child we started.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
        let status = child.wait().expect("wait");
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        assert!(status.success(), "{status}: {log}");
        log
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            if let Ok(p) = std::ffi::CString::new(self.dir.as_os_str().as_encoded_bytes()) {
                // SAFETY: umount2 on a path we own; a lazy unmount of a dead FUSE mount.
                unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}
