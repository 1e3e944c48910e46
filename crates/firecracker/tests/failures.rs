//! How the driver fails: a Firecracker killed mid-run, an API call Firecracker refuses, a
//! binary that is not Firecracker or does not start, and signals to our process. Each is
//! a clear one-line error, never a hang, and leaves no process, socket or directory.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use snapbpf_firecracker::{
    guest, ApiError, Binary, LocateError, MachineConfig, MemBackend, SerialError, SpawnError, Vm,
};

fn one_line(e: &dyn std::error::Error) -> String {
    let line = snapbpf_os::error_chain(e);
    assert!(!line.contains('\n'), "not one line: {line:?}");
    line
}

/// Boots `function` and waits for it to be ready.
fn ready_vm(bin: &Binary, dir: &Path, function: &str) -> Vm {
    let info = snapbpf_functions::info(function).expect("function exists");
    let index = snapbpf_functions::index_of(function).expect("function exists");
    let elf = guest_elf(dir);
    let mut vm = Vm::spawn(bin).expect("spawn");
    let machine = MachineConfig {
        mem_mib: info.mem_mib,
        vcpus: 1,
        track_dirty_pages: false,
    };
    vm.boot(&elf, &format!("snapbpf.function={index}"), machine)
        .expect("boot");
    guest::wait_ready(vm.serial(), Instant::now() + GUEST_TIMEOUT).expect("ready");
    vm
}

#[test]
fn a_firecracker_killed_mid_run_is_a_clear_error() {
    let Some(bin) = firecracker() else { return };
    let dir = scratch();
    let mut vm = ready_vm(&bin, dir.path(), "pyaes");
    let pid = vm.pid();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    });
    // No input was sent: the test is waiting for a result line when the kill comes.
    let started = Instant::now();
    let e = vm
        .serial()
        .read_line(Instant::now() + Duration::from_secs(60))
        .expect_err("Firecracker was killed");
    killer.join().expect("killer");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(e, SerialError::Exited { .. }), "{e:?}");
    let line = one_line(&e);
    assert!(
        line.starts_with(
            "Firecracker was killed by signal 9 while waiting for the guest's next line"
        ),
        "{line}"
    );
    // Talking to it again fails the same way, at once.
    let e = guest::invoke(vm.serial(), 0, Instant::now() + Duration::from_secs(60))
        .expect_err("Firecracker is dead");
    let line = one_line(&e);
    assert!(
        line.starts_with("sending the input to the guest: Firecracker was killed by signal 9"),
        "{line}"
    );
    // And so does an API call.
    let e = vm.pause().expect_err("Firecracker is dead");
    assert!(matches!(e, ApiError::Exited { .. }), "{e:?}");
    assert!(
        one_line(&e).starts_with("Firecracker was killed by signal 9 during API PATCH /vm"),
        "{e}"
    );
    gone_after_drop(vm);
}

#[test]
fn a_firecracker_killed_during_an_invocation_is_a_clear_error() {
    let Some(bin) = firecracker() else { return };
    let dir = scratch();
    let mut vm = ready_vm(&bin, dir.path(), "bert");
    let pid = vm.pid();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    });
    let started = Instant::now();
    let result = guest::invoke(vm.serial(), 0, Instant::now() + Duration::from_secs(120));
    killer.join().expect("killer");
    let e = result.expect_err("Firecracker was killed");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        one_line(&e)
            .starts_with("waiting for the guest's result: Firecracker was killed by signal 9"),
        "{e}"
    );
    gone_after_drop(vm);
}

#[test]
fn an_api_error_names_the_call_and_firecrackers_fault_message() {
    let Some(bin) = firecracker() else { return };
    let dir = scratch();
    let missing = dir.path().join("no-such-vmstate");
    let mut vm = Vm::spawn(&bin).expect("spawn");
    let e = vm
        .load_snapshot(
            &missing,
            MemBackend::File(&dir.path().join("no-such-memory")),
        )
        .expect_err("there is no snapshot");
    let ApiError::Status {
        status,
        fault_message,
        ..
    } = &e
    else {
        panic!("{e:?}")
    };
    assert_eq!(*status, 400, "{e}");
    assert!(fault_message.contains("No such file or directory"), "{e}");
    let line = one_line(&e);
    assert!(
        line.starts_with("Firecracker API PUT /snapshot/load answered HTTP 400: "),
        "{line}"
    );
    assert!(line.contains(fault_message.as_str()), "{line}");
    assert!(line.contains("; Firecracker's log: "), "{line}");
    eprintln!("{line}");

    // A boot with a kernel that is not there names its call too.
    let mut vm2 = Vm::spawn(&bin).expect("spawn");
    let machine = MachineConfig {
        mem_mib: 64,
        vcpus: 1,
        track_dirty_pages: false,
    };
    let e = vm2
        .boot(&dir.path().join("no-such-kernel"), "", machine)
        .expect_err("there is no kernel");
    let line = one_line(&e);
    assert!(
        line.starts_with("Firecracker API PUT /boot-source answered HTTP 400: "),
        "{line}"
    );
    eprintln!("{line}");
    gone_after_drop(vm2);
    // The failed process is still usable for nothing, and cleans up all the same.
    gone_after_drop(vm);
}

/// A script that claims to be Firecracker for `--version`, and otherwise writes the path
/// it was given for its API socket to `dir/api-sock`, prints `message` to stderr and
/// exits 1.
fn fake_firecracker(dir: &Path, message: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("firecracker");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'Firecracker v0.0.0-fake'; exit 0; fi\necho \"$2\" > '{}'\necho '{message}' >&2\nexit 1\n",
            dir.join("api-sock").display()
        ),
    )
    .expect("write the script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    path
}

#[test]
fn a_firecracker_that_does_not_start_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = fake_firecracker(dir.path(), "cannot open /dev/kvm: permission denied");
    let bin = Binary::locate(Some(&path)).expect("it answers --version");
    assert_eq!(bin.version(), "Firecracker v0.0.0-fake");
    let e = Vm::spawn(&bin).expect_err("it exits at once");
    assert!(matches!(e, SpawnError::Exited { .. }), "{e:?}");
    assert_eq!(
        one_line(&e),
        "Firecracker exited with status 1 before its API socket appeared; Firecracker's log: cannot open /dev/kvm: permission denied"
    );
    let socket = std::fs::read_to_string(dir.path().join("api-sock")).expect("it ran");
    let private = Path::new(socket.trim()).parent().expect("a directory");
    assert!(private.is_absolute(), "{private:?}");
    assert!(!private.exists(), "{private:?} is left behind");
}

#[test]
fn binaries_that_are_not_firecracker_are_refused() {
    let e = Binary::locate(Some(Path::new("/bin/true"))).expect_err("not Firecracker");
    assert!(matches!(e, LocateError::NotFirecracker { .. }), "{e:?}");
    let line = one_line(&e);
    assert!(
        line.starts_with(
            "/bin/true --version is not Firecracker's (exit status: 0): first line \""
        ),
        "{line}"
    );
    let e = Binary::locate(Some(Path::new("/no/such/firecracker"))).expect_err("absent");
    assert_eq!(
        one_line(&e),
        "Firecracker binary /no/such/firecracker (--firecracker) is not an executable file"
    );
}

#[test]
fn the_real_binary_reports_its_version() {
    let Some(bin) = firecracker() else { return };
    assert!(
        bin.version().starts_with("Firecracker v"),
        "{}",
        bin.version()
    );
    assert!(bin.path().is_absolute() || bin.path().exists());
}

/// The child half of the signal test: spawns a VM, prints its pid and directory, waits.
#[test]
fn signal_child() {
    if std::env::var_os("SNAPBPF_FC_SIGNAL_CHILD").is_none() {
        return;
    }
    snapbpf_os::terminate::set_hook(|code| std::process::exit(code));
    snapbpf_os::interrupt::install().expect("install the signal handlers");
    let bin = Binary::locate(None).expect("Firecracker");
    let vm = Vm::spawn(&bin).expect("spawn");
    println!("VM {} {}", vm.pid(), vm.dir().display());
    std::thread::sleep(Duration::from_secs(120));
    drop(vm);
}

/// Runs [`signal_child`] in a new test process, sends it `signal`, and returns its
/// Firecracker's pid and directory once the child has ended.
fn run_child_and_signal(
    signal: libc::c_int,
) -> (u32, std::path::PathBuf, std::process::ExitStatus) {
    use std::io::BufRead;
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "signal_child", "--nocapture", "--test-threads=1"])
        .env("SNAPBPF_FC_SIGNAL_CHILD", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the child");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let (pid, dir) = loop {
        let line = lines
            .next()
            .expect("the child printed its VM")
            .expect("read");
        // libtest prints "test signal_child ... " before it, on the same line.
        if let Some((_, rest)) = line.split_once("VM ") {
            let (pid, dir) = rest.split_once(' ').expect("pid and dir");
            break (
                pid.parse::<u32>().expect("pid"),
                std::path::PathBuf::from(dir),
            );
        }
    };
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "Firecracker runs"
    );
    // SAFETY: kill(2) on our own child process.
    unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    let status = child.wait().expect("wait for the child");
    (pid, dir, status)
}

/// Whether process `pid` is gone (or a zombie nobody reaped yet), within `window`.
fn dies_within(pid: u32, window: Duration) -> bool {
    let deadline = Instant::now() + window;
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim().chars().next()))
            .flatten();
        if matches!(state, None | Some('Z') | Some('X')) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sigterm_and_sigint_kill_firecracker_and_remove_its_directory() {
    if firecracker().is_none() {
        return;
    }
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let (pid, dir, status) = run_child_and_signal(signal);
        assert_eq!(
            status.code(),
            Some(128 + signal),
            "the child ends by the hook"
        );
        assert!(
            dies_within(pid, Duration::from_secs(5)),
            "Firecracker {pid} survived"
        );
        assert!(!dir.exists(), "{dir:?} is left behind");
    }
}

#[test]
fn firecracker_dies_with_its_parent() {
    if firecracker().is_none() {
        return;
    }
    let (pid, dir, status) = run_child_and_signal(libc::SIGKILL);
    assert_eq!(status.code(), None, "killed");
    assert!(
        dies_within(pid, Duration::from_secs(5)),
        "Firecracker {pid} outlived its parent"
    );
    // SIGKILL leaves no chance to clean up: the directory stays, with nothing alive in it.
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_line_the_guest_cannot_parse_is_answered_on_its_console_and_ignored() {
    let Some(bin) = firecracker() else { return };
    let dir = scratch();
    let mut vm = ready_vm(&bin, dir.path(), "pyaes");
    vm.serial().write_line("input twelve").expect("write");
    let line = vm
        .serial()
        .read_line(Instant::now() + Duration::from_secs(30))
        .expect("the guest answers");
    assert_eq!(
        line,
        "snapbpf console ignored a line that is not `input <n>`: input twelve"
    );
    assert!(matches!(
        vm.serial().write_line("two\nlines"),
        Err(SerialError::Newline(_))
    ));
    // The guest still serves invocations; guest::invoke skips console lines.
    vm.serial().write_line("bogus").expect("write");
    let index = snapbpf_functions::index_of("pyaes").expect("pyaes");
    let done = guest::invoke(vm.serial(), 1, Instant::now() + GUEST_TIMEOUT).expect("invoke");
    assert_eq!(done.checksum, reference(index, &[1])[0]);
    assert_eq!(done.invocations, 1);
    gone_after_drop(vm);
}

#[test]
fn a_guest_panic_is_an_error_with_its_message() {
    let Some(bin) = firecracker() else { return };
    let dir = scratch();
    let elf = guest_elf(dir.path());
    let machine = MachineConfig {
        mem_mib: 64,
        vcpus: 1,
        track_dirty_pages: false,
    };
    for (args, message) in [
        (
            "snapbpf.function=99",
            "the guest panicked: unknown function index 99",
        ),
        (
            "console=ttyS0 quiet",
            "the guest panicked: no `snapbpf.function=<index>` on the kernel command line",
        ),
        (
            "snapbpf.function=x1",
            "the guest panicked: bad `snapbpf.function=` value on the kernel command line",
        ),
    ] {
        let mut vm = Vm::spawn(&bin).expect("spawn");
        vm.boot(&elf, args, machine).expect("boot");
        let e = guest::wait_ready(vm.serial(), Instant::now() + GUEST_TIMEOUT)
            .expect_err("the guest panics");
        assert_eq!(one_line(&e), message, "{args}");
        gone_after_drop(vm);
    }
}
