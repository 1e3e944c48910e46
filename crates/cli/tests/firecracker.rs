//! snapbpf driving an unmodified Firecracker: snapshots it takes, restores under every
//! strategy that runs on it (with 1 and 10 VMs, every function, checksums against the
//! fresh boot), refusals of strategies it cannot run, a Firecracker killed mid-run, and
//! nothing left behind.
//!
//! They need Firecracker (`$FIRECRACKER`, else `firecracker` on PATH; `.ci/run` points
//! `$FIRECRACKER` at the one built for this machine kind) and /dev/kvm; without either they
//! skip loudly, and fail under `CI=true`.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// A Firecracker snapshot of `function` under `dir`.
fn fc_snapshot(dir: &Path, function: &str) -> PathBuf {
    let out = dir.join(format!("fc-{function}"));
    ok(&[
        "snapshot",
        function,
        "--out",
        out.to_str().expect("UTF-8"),
        "--vmm",
        "firecracker",
    ]);
    out
}

/// The tests of this file one at a time: each checks that no Firecracker is left on the
/// host once it is done, which another test's running VMs would contradict.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every Firecracker process on the host (what `/proc/PID/comm` names `firecracker`).
fn firecrackers() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "firecracker")
        })
        .collect()
}

/// Whether `pid` is `ancestor` or one of its descendants (by the parents in /proc).
fn descends_from(mut pid: u32, ancestor: u32) -> bool {
    for _ in 0..64 {
        if pid == ancestor {
            return true;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // The parent is the second field after the parenthesised command name.
        let Some(parent) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            return false;
        };
        if parent <= 1 {
            return false;
        }
        pid = parent;
    }
    false
}

/// No Firecracker is left, waiting a moment for processes being reaped.
fn assert_none_left() {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !firecrackers().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(firecrackers(), Vec::<u32>::new(), "no Firecracker left");
}

/// The strategies that run under Firecracker, as `--strategy` arguments.
const STRATEGIES: &[&str] = &["linux-nora", "linux-ra", "snapbpf", "reap", "sabre"];

/// Every function restores under Firecracker with every strategy it supports, cold, to
/// the fresh boot's checksum; the record phases run under Firecracker too.
#[test]
fn every_function_under_every_firecracker_strategy() {
    let _serial = one_at_a_time();
    if firecracker().is_none() {
        return;
    }
    let dir = scratch();
    for info in snapbpf_functions::FUNCTIONS.iter().filter(|f| f.workload) {
        let snap = fc_snapshot(dir.path(), info.name);
        let s = snap.to_str().expect("UTF-8");
        let meta: serde_json::Value = serde_json::from_slice(
            &std::fs::read(snap.join("snapshot.json")).expect("snapshot.json"),
        )
        .expect("JSON");
        assert_eq!(meta["vmm"], "firecracker");
        assert!(
            meta["firecracker"]["version"]
                .as_str()
                .is_some_and(|v| v.contains("Firecracker")),
            "{meta}"
        );
        // Firecracker writes every page; its zero pages are punched into holes after it,
        // so the file costs its data's blocks (the restores below read them as zeros).
        {
            use std::os::unix::fs::MetadataExt;
            let memory = std::fs::metadata(snap.join("memory")).expect("stat memory");
            assert!(
                memory.blocks() * 512 < memory.len(),
                "{}: {} bytes of blocks for a {}-byte memory file",
                info.name,
                memory.blocks() * 512,
                memory.len()
            );
        }
        for strategy in ["snapbpf", "reap", "sabre"] {
            ok(&["record", s, "--strategy", strategy]);
        }
        let expected = fresh_checksums(info.name);
        for strategy in STRATEGIES {
            let report = json(&["invoke", s, "--strategy", strategy, "--cold"]);
            assert_eq!(
                checksums(&report),
                vec![expected[0].clone()],
                "{} under {strategy}",
                info.name
            );
        }
    }
    assert_none_left();
}

/// Ten Firecracker VMs at once, under each strategy, all return the fresh boot's checksum;
/// SnapBPF's prefetch is shared (one prefetch of the working set for all ten).
#[test]
fn ten_firecracker_vms_at_once() {
    let _serial = one_at_a_time();
    if firecracker().is_none() {
        return;
    }
    let dir = scratch();
    for function in ["pyaes", "html_serving"] {
        let snap = fc_snapshot(dir.path(), function);
        let s = snap.to_str().expect("UTF-8");
        for strategy in ["snapbpf", "reap", "sabre"] {
            ok(&["record", s, "--strategy", strategy]);
        }
        let expected = fresh_checksums(function)[0].clone();
        for strategy in STRATEGIES {
            let report = json(&[
                "invoke",
                s,
                "--strategy",
                strategy,
                "--cold",
                "--concurrency",
                "10",
            ]);
            assert_eq!(
                checksums(&report),
                vec![expected.clone(); 10],
                "{function} x10 under {strategy}"
            );
        }
    }
    assert_none_left();
}

/// Strategies Firecracker cannot run are refused before any VM starts, naming both.
#[test]
fn unsupported_pairs_are_refused() {
    let _serial = one_at_a_time();
    if firecracker().is_none() {
        return;
    }
    let dir = scratch();
    let snap = fc_snapshot(dir.path(), "pyaes");
    let s = snap.to_str().expect("UTF-8");
    fails(
        &["invoke", s, "--strategy", "faasnap"],
        "strategy 'faasnap' does not run under the firecracker VMM (it runs under: builtin)",
    );
    fails(
        &["record", s, "--strategy", "faasnap"],
        "does not run under the firecracker VMM",
    );
    fails(
        &["invoke", s, "--strategy", "linux-ra", "--thp"],
        "strategy option 'thp' needs snapbpf's own VMM",
    );
    let listing = json(&["strategies"]);
    let vmms = |name: &str| {
        listing["strategies"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == name))
            .map(|s| s["vmms"].clone())
    };
    assert_eq!(
        vmms("snapbpf"),
        Some(serde_json::json!(["builtin", "firecracker"]))
    );
    assert_eq!(vmms("faasnap"), Some(serde_json::json!(["builtin"])));
}

/// A Firecracker killed while its guest runs fails the invoke with a clear error, and
/// nothing is left behind.
#[test]
fn a_firecracker_killed_mid_run_fails_the_invoke() {
    let _serial = one_at_a_time();
    if firecracker().is_none() {
        return;
    }
    let dir = scratch();
    let snap = fc_snapshot(dir.path(), "bert");
    let s = snap.to_str().expect("UTF-8");
    let child = std::process::Command::new(bin())
        .args(["invoke", s, "--strategy", "linux-nora", "--cold"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("invoke");
    // Kill the Firecracker as soon as it runs (bert runs for seconds cold).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let victim = loop {
        // Only one of this invoke's (another test's Firecracker may still be exiting), and
        // the VM's, not the `firecracker --version` the invoke asks first.
        if let Some(pid) = firecrackers().into_iter().find(|&pid| {
            descends_from(pid, child.id())
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.split(|&b| b == 0).any(|arg| arg == b"--api-sock"))
        }) {
            break pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no Firecracker started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    std::thread::sleep(std::time::Duration::from_millis(200));
    // SAFETY: kill(2) on a process this test found among its own descendants.
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    let out = child.wait_with_output().expect("invoke ends");
    assert!(
        !out.status.success(),
        "a killed Firecracker fails the run: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Firecracker") || stderr.contains("firecracker"),
        "the error names Firecracker: {stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert_none_left();
}
