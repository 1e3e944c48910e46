//! Snapshots are identified by content: a copy (`cp -r`, to another directory) restores
//! under every strategy with the fresh boot's checksum, and `snapbpf verify` catches a
//! one-byte change even when the file's mtime is put back.

mod common;

use std::process::Command;

use common::*;

/// Every registered strategy, and whether it records.
fn strategies() -> Vec<(String, bool)> {
    let listed = json(&["strategies"]);
    listed["strategies"]
        .as_array()
        .expect("strategies")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().expect("name").to_string(),
                s["record"].as_bool().expect("record"),
            )
        })
        .collect()
}

#[test]
fn a_copied_snapshot_restores_under_every_strategy() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let original = snapshot(dir.path(), "pyaes");
    let original_s = original.to_str().expect("UTF-8");
    let want = json(&["boot", "pyaes", "--input", "1"])["checksum"]
        .as_str()
        .expect("checksum")
        .to_string();
    let all = strategies();
    // The store strategies restore from an in-memory store of their own.
    let store = Store::start(dir.path(), "1G");
    let with_store = |args: &[&str], name: &str| -> Vec<String> {
        let mut v: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        if name == "snapfaas" {
            v.extend(["--store".to_string(), store.sock().to_string()]);
        }
        v
    };
    for (name, records) in &all {
        if *records {
            json(&["record", original_s, "--strategy", name, "--input", "0"]);
        }
    }
    // A plain `cp -r`: new inodes, new mtimes, another directory.
    let copy = dir.path().join("elsewhere").join("pyaes-copy");
    std::fs::create_dir_all(copy.parent().expect("parent")).expect("mkdir");
    let status = Command::new("cp")
        .arg("-r")
        .arg(&original)
        .arg(&copy)
        .status()
        .expect("cp");
    assert!(status.success(), "cp -r");
    let copy_s = copy.to_str().expect("UTF-8");
    let verified = json(&["verify", copy_s]);
    assert_eq!(verified["ok"], true, "{verified}");
    for (name, _) in &all {
        let args = with_store(
            &[
                "invoke",
                copy_s,
                "--strategy",
                name,
                "--input",
                "1",
                "--cold",
            ],
            name,
        );
        let report = json(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(checksums(&report), vec![want.clone()], "{name} on the copy");
    }

    // One byte of the copy's memory file, mtime put back: verify names the file.
    flip_keeping_mtime(&copy.join("memory"), 3 * 4096 + 5);
    let out = run(&["verify", copy_s]);
    assert_eq!(out.status.code(), Some(1), "verify must fail");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.lines().any(|l| l.starts_with("WRONG  memory")),
        "{stdout}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("memory"), "{stderr}");
    // And no strategy restores from it: the store, asked again, checks it again.
    ok(&["store", "evict", copy_s, "--socket", store.sock()]);
    for (name, _) in &all {
        let args = with_store(&["invoke", copy_s, "--strategy", name], name);
        fails(
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
            "memory file is not the one it was taken with",
        );
    }
    // The original is untouched and still verifies.
    assert_eq!(json(&["verify", original_s])["ok"], true);

    // One byte of a data file mapped or copied into the guest: found by verify and
    // refused by its strategy, whatever its mtime says.
    for data in ["faasnap.ws", "reap.ws"] {
        let path = original.join(data);
        flip_keeping_mtime(&path, 4096 + 17);
        let out = run(&["verify", original_s]);
        assert_eq!(out.status.code(), Some(1), "verify must fail for {data}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("WRONG") && l.contains(data)),
            "{data}: {stdout}"
        );
        flip_keeping_mtime(&path, 4096 + 17);
        assert_eq!(json(&["verify", original_s])["ok"], true, "{data} restored");
    }
}

/// Blocks a file holds on disk, in bytes.
fn allocated(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("stat").blocks() * 512
}

/// A snapshot's zero pages are holes (sparse by default), its identity covers them as
/// zeros: a dense copy of it (`cp --sparse=never`) is the same snapshot, verifies and
/// restores with the fresh boot's checksum; `--dense` writes every page.
#[test]
fn a_sparse_snapshot_costs_its_data_and_a_dense_copy_is_the_same_snapshot() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let sparse = dir.path().join("sparse");
    let sparse_s = sparse.to_str().expect("UTF-8");
    ok(&["snapshot", "pyaes", "--mem-mib", "1024", "--out", sparse_s]);
    let memory = sparse.join("memory");
    let data = data_bytes(&memory);
    let blocks = allocated(&memory);
    assert_eq!(std::fs::metadata(&memory).expect("stat").len(), 1 << 30);
    // Blocks for the data pages only (rounded to the filesystem's blocks), not 1 GiB.
    assert!(
        blocks >= data && blocks < data + (8 << 20) && blocks < 128 << 20,
        "{blocks} bytes of blocks for {data} bytes of data"
    );
    let dense_copy = dir.path().join("dense-copy");
    let status = Command::new("cp")
        .args(["-r", "--sparse=never"])
        .arg(&sparse)
        .arg(&dense_copy)
        .status()
        .expect("cp");
    assert!(status.success(), "cp --sparse=never");
    assert!(
        allocated(&dense_copy.join("memory")) >= 1 << 30,
        "a dense copy"
    );
    let copy_s = dense_copy.to_str().expect("UTF-8");
    let verified = json(&["verify", copy_s]);
    assert_eq!(verified["ok"], true, "{verified}");
    let want = json(&["boot", "pyaes", "--input", "1"])["checksum"]
        .as_str()
        .expect("checksum")
        .to_string();
    for snap in [sparse_s, copy_s] {
        let report = json(&["invoke", snap, "--input", "1", "--cold"]);
        assert_eq!(checksums(&report), vec![want.clone()], "{snap}: {report}");
        // What the VM cost in CPU, restore to result: some, and no more than its two
        // cores could give in that time.
        let run = &report["runs"][0];
        let (cpu, e2e) = (run["cpu_ms"].as_f64(), run["e2e_ms"].as_f64());
        assert!(
            cpu.zip(e2e)
                .is_some_and(|(c, e)| c > 0.0 && c <= 2.0 * e + 10.0),
            "{run}"
        );
    }
    let dense = dir.path().join("dense");
    ok(&[
        "snapshot",
        "pyaes",
        "--dense",
        "--out",
        dense.to_str().expect("UTF-8"),
    ]);
    let dense_memory = dense.join("memory");
    assert!(
        allocated(&dense_memory) >= std::fs::metadata(&dense_memory).expect("stat").len(),
        "--dense writes every page"
    );
}
