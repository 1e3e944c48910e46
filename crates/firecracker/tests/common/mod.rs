//! Helpers of the Firecracker tests: finding Firecracker and KVM, the guest image on disk,
//! booting and snapshotting a function, and checking that nothing is left behind.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use snapbpf_firecracker::{guest, Binary, MachineConfig, Vm};

/// How long a boot to ready or one invocation may take.
pub const GUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// Firecracker (via `$FIRECRACKER`, then `PATH`) when it and `/dev/kvm` are usable. Without
/// them the test is skipped loudly, except under `CI=true`, where that is a failure.
pub fn firecracker() -> Option<Binary> {
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
        .map_err(|e| format!("/dev/kvm is not usable: {e}"));
    let bin = kvm.and_then(|()| Binary::locate(None).map_err(|e| e.to_string()));
    match bin {
        Ok(bin) => Some(bin),
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{why}, and CI=true: the Firecracker tests must run in CI")
        }
        Err(why) => {
            eprintln!(
                "\n!!!!!!!! SKIPPED: {why}; the Firecracker tests did not run (set FIRECRACKER=/path/to/firecracker) !!!!!!!!\n"
            );
            None
        }
    }
}

/// A private scratch directory on the real disk (not tmpfs: snapshots are large).
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("snapbpf-fc-test-")
        .tempdir_in("/var/tmp")
        .expect("cannot create a scratch directory in /var/tmp")
}

/// Writes the embedded guest image into `dir` (mode 0600) and returns its path.
pub fn guest_elf(dir: &Path) -> PathBuf {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("guest.elf");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .expect("create guest.elf");
    f.write_all(snapbpf_guest_image::GUEST_ELF)
        .expect("write guest.elf");
    path
}

/// The argument the tests give `function`: its default where it takes one (`footprint`),
/// so its init and invocations do real work.
pub fn default_arg(function: u32) -> u64 {
    snapbpf_functions::FUNCTIONS[function as usize]
        .arg
        .map_or(0, |spec| spec.default)
}

/// The host reference: the function run on the host, inputs in order on one instance.
pub fn reference(function: u32, inputs: &[u32]) -> Vec<u64> {
    let mut f = snapbpf_functions::init(function, default_arg(function)).expect("function exists");
    inputs.iter().map(|&i| f.invoke(i)).collect()
}

/// What a snapshot of one function is made of.
pub struct Snapshot {
    /// The function's index.
    pub function: u32,
    /// Firecracker's vmstate file.
    pub vmstate: PathBuf,
    /// The memory file.
    pub memory: PathBuf,
    /// Spawn to ready.
    pub boot: Duration,
    /// Pause plus create.
    pub create: Duration,
}

/// Boots `function` under Firecracker from the guest image in `dir`, waits for ready,
/// pauses, snapshots into `dir`, and kills it, checking it leaves nothing behind.
pub fn snapshot(bin: &Binary, dir: &Path, function: u32) -> Snapshot {
    let info = &snapbpf_functions::FUNCTIONS[function as usize];
    let elf = guest_elf(dir);
    let started = Instant::now();
    let mut vm = Vm::spawn(bin).expect("spawn Firecracker");
    let machine = MachineConfig {
        mem_mib: info.mem_mib,
        vcpus: 1,
        track_dirty_pages: false,
    };
    let args = match default_arg(function) {
        0 => format!("snapbpf.function={function}"),
        arg => format!("snapbpf.function={function} snapbpf.arg={arg}"),
    };
    vm.boot(&elf, &args, machine)
        .unwrap_or_else(|e| panic!("boot {}: {e}", info.name));
    let ready = guest::wait_ready(vm.serial(), Instant::now() + GUEST_TIMEOUT)
        .unwrap_or_else(|e| panic!("{} never got ready: {e}", info.name));
    let boot = started.elapsed();
    assert_eq!(
        (ready.abi, ready.function),
        (snapbpf_guest_abi::ABI_VERSION, function)
    );
    let (vmstate, memory) = (dir.join("vmstate"), dir.join("memory"));
    let started = Instant::now();
    vm.pause().expect("pause");
    vm.create_snapshot(&vmstate, &memory)
        .unwrap_or_else(|e| panic!("snapshot {}: {e}", info.name));
    let create = started.elapsed();
    let len = std::fs::metadata(&memory).expect("memory file").len();
    assert_eq!(len, u64::from(info.mem_mib) << 20, "memory file size");
    for file in [&vmstate, &memory] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(file).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{file:?} mode {mode:o}");
    }
    gone_after_drop(vm);
    Snapshot {
        function,
        vmstate,
        memory,
        boot,
        create,
    }
}

/// Whether `pid` is a live (or unreaped) child process of ours.
pub fn is_our_child(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The fields after the command name (which is in parentheses): state, ppid, ...
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let ppid: u32 = after
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    ppid == std::process::id()
}

/// Drops `vm` and checks that its process and its private directory are gone.
pub fn gone_after_drop(vm: Vm) {
    let (pid, dir) = (vm.pid(), vm.dir().to_path_buf());
    assert!(
        dir.join("api.sock").exists(),
        "the API socket is in {dir:?}"
    );
    drop(vm);
    assert_gone(pid, &dir);
}

/// Checks that the Firecracker `pid` is no child of ours any more and `dir` is gone.
pub fn assert_gone(pid: u32, dir: &Path) {
    assert!(!is_our_child(pid), "Firecracker {pid} is still our child");
    assert!(!dir.exists(), "{dir:?} is left behind");
}
