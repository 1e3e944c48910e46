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
}

impl Store {
    /// Starts a store with `capacity` listening in `dir`.
    pub fn start(dir: &Path, capacity: &str) -> Self {
        let socket = dir.join("store.sock");
        let child = Command::new(bin())
            .args(["store", "serve", "--capacity", capacity, "--socket"])
            .arg(&socket)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the store");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !socket.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the store never listened"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Self { child, socket }
    }

    /// Its socket, as an argument.
    pub fn sock(&self) -> &str {
        self.socket.to_str().expect("UTF-8")
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
