//! The snapbpf strategy: eBPF capture against ground truth, prefetch, artifact binding,
//! PV filtering, and the VMM-agnostic trace/prefetch commands.

mod common;

use std::path::Path;

use common::*;

/// Pages of `file` resident in the page cache, by mincore.
fn resident(file: &Path) -> Vec<u64> {
    let f = std::fs::File::open(file).expect("open");
    snapbpf_store::fsutil::residency(&f)
        .expect("mincore")
        .iter()
        .enumerate()
        .filter(|(_, b)| **b & 1 != 0)
        .map(|(i, _)| i as u64)
        .collect()
}

/// Pages listed by a working set, via `snapbpf inspect --json`.
fn ws_pages(ws: &Path) -> Vec<u64> {
    let v = json(&["inspect", ws.to_str().expect("UTF-8")]);
    let mut pages: Vec<u64> = v["ranges_list"]
        .as_array()
        .expect("ranges_list")
        .iter()
        .flat_map(|r| {
            let start = r["start"].as_u64().expect("start");
            start..start + r["pages"].as_u64().expect("pages")
        })
        .collect();
    pages.sort_unstable();
    pages
}

fn recall_and_extra(captured: &[u64], truth: &[u64]) -> (f64, f64) {
    let truth_set: std::collections::BTreeSet<_> = truth.iter().collect();
    let hits = captured.iter().filter(|p| truth_set.contains(p)).count();
    (
        hits as f64 / truth.len().max(1) as f64,
        (captured.len() - hits) as f64 / truth.len().max(1) as f64,
    )
}

/// The eBPF capture agrees with an independent ground truth: the pages `mincore` finds
/// resident after the recorded run (which started from an evicted file, with readahead off).
#[test]
fn capture_matches_mincore_ground_truth() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let snap = snapshot(dir.path(), "graph_bfs");
    let snap_s = snap.to_str().expect("UTF-8");
    ok(&["record", snap_s, "--strategy", "snapbpf"]);
    let truth = resident(&snap.join("memory"));
    let captured = ws_pages(&snap.join("snapbpf.ws"));
    let (recall, extra) = recall_and_extra(&captured, &truth);
    assert!(
        truth.len() > 1000,
        "ground truth has only {} pages",
        truth.len()
    );
    assert!(
        recall >= 0.99,
        "recall {recall} (captured {}, truth {})",
        captured.len(),
        truth.len()
    );
    assert!(extra <= 0.05, "extra pages {extra}");
    // The metadata is tiny next to the pages it describes.
    let meta_bytes = std::fs::metadata(snap.join("snapbpf.ws"))
        .expect("stat")
        .len();
    assert!(
        meta_bytes * 100 <= captured.len() as u64 * 4096,
        "{meta_bytes} bytes of metadata"
    );
}

/// A cold snapbpf restore prefetches the recorded ranges and takes far fewer major faults
/// than linux-ra; PV filtering serves fresh allocations without snapshot I/O.
#[test]
fn prefetch_and_filtering_do_their_work() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let snap = snapshot(dir.path(), "image");
    let s = snap.to_str().expect("UTF-8");
    let recorded = json(&["record", s, "--strategy", "snapbpf"]);
    // SnapBPF's own costs: the capture's CPU during the record, and the time from the
    // restore request to the first prefetch request.
    let capture_cpu = recorded["capture_cpu_ms"].as_f64().expect("capture_cpu_ms");
    assert!(
        capture_cpu > 0.0 && capture_cpu < recorded["ms"].as_f64().expect("ms"),
        "{recorded}"
    );
    let ra = json(&["invoke", s, "--strategy", "linux-ra", "--cold"]);
    let full = json(&["invoke", s, "--strategy", "snapbpf", "--cold"]);
    let first = full["prefetch"]["first_request_ms"]
        .as_f64()
        .expect("first_request_ms");
    assert!(first > 0.0 && first < 1000.0, "{full}");
    let pv_only = json(&[
        "invoke",
        s,
        "--strategy",
        "snapbpf",
        "--no-prefetch",
        "--4k",
        "--cold",
    ]);
    let prefetch_only = json(&[
        "invoke",
        s,
        "--strategy",
        "snapbpf",
        "--no-pv",
        "--4k",
        "--cold",
    ]);
    assert_eq!(checksums(&full), checksums(&ra));
    let runs = |r: &serde_json::Value, k: &str| r["runs"][0][k].as_u64().expect(k);
    // Prefetch: bytes and ranges reported, and the faults mostly gone.
    assert!(full["prefetch"]["bytes"].as_u64() > Some(1 << 20), "{full}");
    assert!(full["prefetch"]["ranges"].as_u64() > Some(0), "{full}");
    assert!(
        runs(&full, "major_faults") * 4 < runs(&ra, "major_faults"),
        "{full} vs {ra}"
    );
    assert_eq!(prefetch_only["runs"][0]["hint_exits"], 0, "{prefetch_only}");
    // Filtering: image allocates its outputs fresh; those bytes come without I/O, so the
    // snapshot's page cache shrinks by at least as much.
    let fresh = runs(&pv_only, "fresh_bytes");
    assert!(fresh > 16 << 20, "{pv_only}");
    assert!(
        runs(&pv_only, "hint_exits") > 0 && runs(&pv_only, "hint_exits") < 100,
        "{pv_only}"
    );
    let cache =
        |r: &serde_json::Value| r["memory"]["page_cache_kib"].as_u64().expect("cache") << 10;
    assert!(
        cache(&pv_only) + fresh / 2 < cache(&ra),
        "{pv_only} vs {ra}"
    );
    assert_eq!(pv_only["prefetch"]["bytes"], 0);
}

/// Ten snapbpf VMs share the prefetched pages: the run's page cache is about one VM's.
#[test]
fn concurrent_snapbpf_vms_share_prefetched_pages() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let snap = snapshot(dir.path(), "pyaes");
    let s = snap.to_str().expect("UTF-8");
    ok(&["record", s, "--strategy", "snapbpf"]);
    let one = json(&["invoke", s, "--strategy", "snapbpf", "--cold"]);
    let ten = json(&[
        "invoke",
        s,
        "--strategy",
        "snapbpf",
        "--cold",
        "--concurrency",
        "10",
    ]);
    let sums = checksums(&ten);
    assert_eq!(sums.len(), 10);
    assert!(sums.iter().all(|c| *c == checksums(&one)[0]));
    let cache = |r: &serde_json::Value| r["memory"]["page_cache_kib"].as_u64().expect("cache");
    assert!(
        cache(&ten) < cache(&one) * 2,
        "ten {} one {}",
        cache(&ten),
        cache(&one)
    );
    // One prefetch per host: ten VMs ask for the working set about once between them.
    let prefetched = |r: &serde_json::Value| r["prefetch"]["bytes"].as_u64().expect("bytes");
    assert!(prefetched(&one) > 0);
    assert!(
        prefetched(&ten) * 10 <= prefetched(&one) * 11,
        "ten VMs prefetched {} bytes, one VM {}",
        prefetched(&ten),
        prefetched(&one)
    );
    // Warm, nothing is left to read ahead.
    let warm = json(&["invoke", s, "--strategy", "snapbpf"]);
    assert_eq!(prefetched(&warm), 0, "{}", warm["prefetch"]);
}

/// Missing, truncated, corrupt, stale and foreign working sets are refused before any VM
/// starts, with one line that says what to do.
#[test]
fn bad_working_sets_are_refused() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let snap = snapshot(dir.path(), "pyaes");
    let s = snap.to_str().expect("UTF-8");
    fails(
        &["invoke", s, "--strategy", "snapbpf"],
        "run `snapbpf record",
    );
    // --no-prefetch needs no working set.
    ok(&["invoke", s, "--strategy", "snapbpf", "--no-prefetch"]);
    ok(&["record", s, "--strategy", "snapbpf"]);
    let ws = snap.join("snapbpf.ws");
    let good = std::fs::read(&ws).expect("read");
    std::fs::write(&ws, &good[..good.len() / 2]).expect("truncate");
    fails(&["invoke", s, "--strategy", "snapbpf"], "truncated");
    let mut corrupt = good.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0x55;
    std::fs::write(&ws, &corrupt).expect("write");
    fails(&["invoke", s, "--strategy", "snapbpf"], "CRC mismatch");
    std::fs::write(&ws, b"not a working set at all, just text").expect("write");
    fails(
        &["invoke", s, "--strategy", "snapbpf"],
        "not a snapbpf artifact (bad magic)",
    );
    // One in the format before working sets were artifacts.
    std::fs::write(&ws, b"SNAPBPFW\x01\0\0\0 and the rest").expect("write");
    fails(
        &["invoke", s, "--strategy", "snapbpf"],
        "written by an older snapbpf (the pre-container working-set format): run `snapbpf record` again",
    );
    // A working set that is a link to a device would be read forever: refused at once.
    std::fs::remove_file(&ws).expect("rm");
    std::os::unix::fs::symlink("/dev/zero", &ws).expect("symlink");
    fails(
        &["invoke", s, "--strategy", "snapbpf"],
        "it is a symbolic link; snapbpf reads only regular files",
    );
    std::fs::remove_file(&ws).expect("rm");
    // A new snapshot with byte-identical memory keeps the working set (identity is
    // content); another snapshot's memory does not accept it.
    ok(&["snapshot", "pyaes", "--out", s, "--force"]);
    std::fs::write(&ws, &good).expect("write");
    ok(&["invoke", s, "--strategy", "snapbpf"]);
    let other = snapshot(dir.path(), "image");
    std::fs::write(other.join("snapbpf.ws"), &good).expect("write");
    fails(
        &[
            "invoke",
            other.to_str().expect("UTF-8"),
            "--strategy",
            "snapbpf",
        ],
        "stale",
    );
    fails(&["record", s, "--strategy", "linux-ra"], "no record phase");
}

/// `trace` and `prefetch` work with a process that is not our VMM: a Python program that
/// maps a file with readahead off and touches chosen pages.
#[test]
fn trace_and_prefetch_any_process() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let file = dir.path().join("data");
    std::fs::write(&file, vec![7u8; 16 << 20]).expect("write");
    let touched: Vec<u64> = (0..4096u64)
        .filter(|p| p % 7 == 3 || (1000..1100).contains(p))
        .collect();
    let script = format!(
        "import mmap,sys\nf=open(sys.argv[1],'rb')\nm=mmap.mmap(f.fileno(),0,prot=mmap.PROT_READ)\n\
         m.madvise(mmap.MADV_RANDOM)\ns=0\nfor p in {touched:?}:\n    s+=m[p*4096]\nprint(s)\n"
    );
    let ws = dir.path().join("data.ws");
    let f = file.to_str().expect("UTF-8");
    let w = ws.to_str().expect("UTF-8");
    ok(&[
        "trace", "--file", f, "--out", w, "--cold", "--", "python3", "-c", &script, f,
    ]);
    let captured = ws_pages(&ws);
    assert_eq!(
        captured, touched,
        "trace must capture exactly the touched pages"
    );
    snapbpf_store::fsutil::evict(&file).expect("evict");
    let out = json(&["prefetch", "--file", f, "--ws", w]);
    assert_eq!(
        out["bytes"].as_u64(),
        Some(touched.len() as u64 * 4096),
        "{out}"
    );
    assert_eq!(out["missing_pages"], 0, "{out}");
    let now = resident(&file);
    let (recall, _) = recall_and_extra(&now, &touched);
    assert!(
        recall >= 0.99,
        "after prefetch only {recall} of the pages are resident"
    );
    // A changed file makes the working set stale.
    std::fs::write(&file, vec![8u8; 16 << 20]).expect("rewrite");
    fails(&["prefetch", "--file", f, "--ws", w], "stale");
    fails(
        &["trace", "--file", "/nonexistent", "--out", w, "--", "true"],
        "nonexistent",
    );
}

/// `trace --pid` attaches to a process that is already running (as an orchestrator
/// attaches to a restored Firecracker before its first invocation) and captures the
/// pages that process touches after the attach: cold ones (read from disk), and ones
/// another process had already cached (the process only faults them in). Accesses by
/// other processes to the same file are not its working set.
#[test]
fn trace_attaches_to_a_running_process() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let file = dir.path().join("memory");
    // Pages [0, 4096) are touched after the attach, [4096, 8192) only by another process,
    // [8192, 12288) before the attach.
    let pages = 12288u64; // 48 MiB
    let bytes: Vec<u8> = (0..pages * 4096).map(|i| (i / 4096 % 251) as u8).collect();
    std::fs::write(&file, &bytes).expect("write");
    // The running process: maps the file with readahead off, touches some pages, says
    // "ready", then touches the pages it is sent and says "done".
    let script = "import mmap,sys\nf=open(sys.argv[1],'rb')\n\
        m=mmap.mmap(f.fileno(),0,prot=mmap.PROT_READ)\nm.madvise(mmap.MADV_RANDOM)\n\
        s=sum(m[p*4096] for p in range(8192,12288,97))\nprint('ready',flush=True)\n\
        todo=[int(x) for x in sys.stdin.readline().split()]\n\
        s+=sum(m[p*4096+5] for p in todo)\nprint('done',s,flush=True)\nsys.stdin.readline()\n";
    let mut vmm = Command::new("python3")
        .args(["-c", script])
        .arg(&file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut to_vmm = vmm.stdin.take().expect("stdin");
    let mut from_vmm = BufReader::new(vmm.stdout.take().expect("stdout"));
    let mut line = String::new();
    from_vmm.read_line(&mut line).expect("ready");
    assert_eq!(line.trim(), "ready");

    let ws = dir.path().join("attached.ws");
    let mut trace = Command::new(bin())
        .args(["trace", "--cold", "--file"])
        .arg(&file)
        .arg("--out")
        .arg(&ws)
        .arg("--pid")
        .arg(vmm.id().to_string())
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("trace");
    let mut trace_err = BufReader::new(trace.stderr.take().expect("stderr"));
    let mut attached = String::new();
    while !attached.starts_with("attached:") {
        attached.clear();
        let n = trace_err.read_line(&mut attached).expect("stderr");
        assert!(n > 0, "trace ended before attaching");
    }

    // After the attach: the pages to touch are in the first half of the file; half of
    // them another process (this test) caches first. That process also reads pages of
    // the second half, which the traced process never touches.
    let todo: Vec<u64> = (0..4096u64).filter(|p| p % 5 == 1 || p % 11 == 0).collect();
    let noise: Vec<u64> = (4096..8192).step_by(3).collect();
    {
        use std::os::unix::fs::FileExt;
        let other = std::fs::File::open(&file).expect("open");
        let mut page = vec![0u8; 4096];
        for p in todo.iter().step_by(2).chain(&noise) {
            other.read_exact_at(&mut page, p * 4096).expect("read");
        }
    }
    let list: Vec<String> = todo.iter().map(|p| p.to_string()).collect();
    writeln!(to_vmm, "{}", list.join(" ")).expect("send");
    line.clear();
    from_vmm.read_line(&mut line).expect("done");
    assert!(line.starts_with("done"), "{line}");

    // Ctrl-C ends the trace, which still writes the working set.
    // SAFETY: kill(2) on the child we started.
    assert_eq!(unsafe { libc::kill(trace.id() as i32, libc::SIGINT) }, 0);
    let out = trace.wait_with_output().expect("trace ends");
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut trace_err, &mut rest);
    assert!(out.status.success(), "trace: {rest}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("stopped by signal"),
        "{:?}",
        out.stdout
    );
    let _ = writeln!(to_vmm);
    let _ = vmm.wait();

    let captured: std::collections::BTreeSet<u64> = ws_pages(&ws).into_iter().collect();
    let found = todo.iter().filter(|p| captured.contains(p)).count();
    let recall = found as f64 / todo.len() as f64;
    assert!(
        recall >= 0.99,
        "recall {recall:.4}: {found} of {} pages touched after the attach",
        todo.len()
    );
    let foreign = noise.iter().filter(|p| captured.contains(p)).count();
    assert_eq!(foreign, 0, "pages only another process read were captured");

    // A process that is not there is refused at once.
    fails(
        &[
            "trace",
            "--file",
            file.to_str().expect("UTF-8"),
            "--out",
            ws.to_str().expect("UTF-8"),
            "--pid",
            "999999999",
        ],
        "no process 999999999",
    );
}

/// `prefetch` run while a VMM is already faulting on the same memory file (an
/// orchestrator starting both at once): the VMM still runs on the snapshot's pages, and
/// `invoke --as-is` leaves the page cache as the caller made it.
#[test]
fn prefetch_beside_a_faulting_vmm() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let snap = snapshot(dir.path(), "pyaes");
    let s = snap.to_str().expect("UTF-8");
    ok(&["record", s, "--strategy", "snapbpf"]);
    let reference = checksums(&json(&["invoke", s, "--strategy", "linux-nora", "--cold"]));
    let memory = snap.join("memory");
    let faults =
        |report: &serde_json::Value| report["runs"][0]["major_faults"].as_u64().expect("faults");

    snapbpf_store::fsutil::evict(&memory).expect("evict");
    let alone = json(&["invoke", s, "--strategy", "linux-nora", "--as-is"]);
    assert_eq!(checksums(&alone), reference);
    assert!(
        faults(&alone) > 100,
        "--as-is after an eviction starts cold: {alone}"
    );

    snapbpf_store::fsutil::evict(&memory).expect("evict");
    let ws = snap.join("snapbpf.ws");
    let prefetch = std::process::Command::new(bin())
        .args(["prefetch", "--json", "--file"])
        .arg(&memory)
        .arg("--ws")
        .arg(&ws)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("prefetch");
    let beside = json(&["invoke", s, "--strategy", "linux-nora", "--as-is"]);
    let prefetched = prefetch.wait_with_output().expect("prefetch ends");
    assert!(prefetched.status.success(), "prefetch failed");
    let report: serde_json::Value =
        serde_json::from_slice(&prefetched.stdout).expect("prefetch JSON");
    assert_eq!(report["missing_pages"].as_u64(), Some(0), "{report}");
    assert_eq!(checksums(&beside), reference, "the VMM beside a prefetch");

    let both = run(&["invoke", s, "--as-is", "--cold"]);
    assert_eq!(both.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&both.stderr).contains("cannot be used with"));
}

/// Where the page cache cannot hold large folios (tmpfs while shmem THP is off), the
/// default restore says that it falls back to 4 KiB pages, and the guest still gets the
/// right pages.
#[test]
fn default_says_when_it_falls_back_to_4k_pages() {
    if !require_kvm() {
        return;
    }
    if !snapbpf_vmm::huge_pages_available() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "transparent huge pages are off and CI=true: the default restore cannot be tested"
        );
        eprintln!("\n!!!!!!!! SKIPPED: transparent huge pages are off !!!!!!!!\n");
        return;
    }
    let dir = scratch();
    let snap = snapshot(dir.path(), "pyaes");
    let s = snap.to_str().expect("UTF-8");
    ok(&["record", s, "--strategy", "snapbpf"]);
    // A tmpfs of our own that never gives large folios, whatever the host's shmem THP.
    let mnt = tempfile::tempdir().expect("mount point");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "huge=never,size=256m", "snapbpf-test"])
        .arg(mnt.path())
        .status()
        .expect("mount runs");
    assert!(mounted.success(), "mount tmpfs (needs root)");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.path().to_path_buf());
    let copy = mnt.path().join("pyaes");
    let cp = std::process::Command::new("cp")
        .args(["-r", "--sparse=always", s])
        .arg(&copy)
        .status()
        .expect("cp runs");
    assert!(cp.success());
    let out = run(&[
        "invoke",
        copy.to_str().expect("UTF-8"),
        "--strategy",
        "snapbpf",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("holds no 2 MiB folios"), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(
        checksums(&report),
        vec![fresh_checksums("pyaes")[0].clone()]
    );
}
