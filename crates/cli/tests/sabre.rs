//! Sabre on real KVM: every function restores to its fresh boot's checksum from a
//! compressed working set; every codec and placement does; damaged, truncated and stale
//! recordings are refused before the VM runs or fail it cleanly, never with wrong pages.

mod common;

use std::path::Path;

use common::*;

fn invoke(snap: &str, spec: &str, input: u32, concurrency: u32) -> serde_json::Value {
    json(&[
        "invoke",
        snap,
        "--strategy",
        spec,
        "--cold",
        "--input",
        &input.to_string(),
        "--concurrency",
        &concurrency.to_string(),
    ])
}

/// The restore's compression report.
fn compression(report: &serde_json::Value) -> &serde_json::Value {
    &report["prefetch"]["compression"]
}

/// Every function, recorded with input 0 under the default codec and placement, restores
/// each input to the fresh boot's checksum; one function also with ten VMs at once.
#[test]
fn sabre_matches_fresh_boot_for_every_function() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    for info in snapbpf_functions::FUNCTIONS {
        let function = info.name;
        let snap_path = snapshot(dir.path(), function);
        let snap = snap_path.to_str().expect("UTF-8 path");
        let expected = fresh_checksums(function);
        let rec = json(&["record", snap, "--strategy", "sabre"]);
        assert!(rec["pages"].as_u64() > Some(100), "{function}: {rec}");
        for (input, want) in expected.iter().enumerate() {
            let report = invoke(snap, "sabre", input as u32, 1);
            assert_eq!(
                checksums(&report),
                vec![want.clone()],
                "{function} input {input}"
            );
            let c = compression(&report);
            assert!(
                c["compressed_bytes"].as_u64() > Some(0)
                    && c["raw_bytes"].as_u64() == report["prefetch"]["bytes"].as_u64(),
                "{function}: {report}"
            );
        }
        std::fs::remove_dir_all(&snap_path).expect("free the snapshot's space");
    }
    let snap_path = snapshot(dir.path(), "image");
    let snap = snap_path.to_str().expect("UTF-8 path");
    let want = fresh_checksums("image");
    json(&["record", snap, "--strategy", "sabre"]);
    let report = invoke(snap, "sabre", 1, 10);
    assert_eq!(checksums(&report), vec![want[1].clone(); 10], "ten VMs");
}

/// Each codec with each placement (and one decompression thread) restores correctly, and
/// the recording says what it holds.
#[test]
fn every_codec_and_placement_restores() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let snap_path = snapshot(dir.path(), "pyaes");
    let snap = snap_path.to_str().expect("UTF-8 path");
    let want = fresh_checksums("pyaes");
    for codec in ["zstd-dict", "zstd", "lz4"] {
        for placement in ["single", "scattered"] {
            let spec = format!("sabre:codec={codec}:placement={placement}");
            json(&["record", snap, "--strategy", &spec]);
            let described = ok(&["inspect", snap]);
            assert!(
                described.contains(&format!("{codec} level")) && described.contains(placement),
                "{spec}: {described}"
            );
            for threads in ["1", "2"] {
                let restore = format!("{spec}:threads={threads}");
                let report = invoke(snap, &restore, 1, 1);
                assert_eq!(checksums(&report), vec![want[1].clone()], "{restore}");
            }
            // A restore asking for another codec than the recording's is refused.
            let other = if codec == "lz4" { "zstd" } else { "lz4" };
            fails(
                &[
                    "invoke",
                    snap,
                    "--strategy",
                    &format!("sabre:codec={other}"),
                ],
                "not the options given",
            );
        }
    }
}

fn flip_byte(path: &Path, at: u64) {
    let mut b = std::fs::read(path).expect("read");
    let at = (at as usize).min(b.len() - 1);
    b[at] ^= 0x5a;
    std::fs::write(path, b).expect("write");
}

/// A truncated stream, a corrupt stream, a corrupt or missing partitions file and a stale
/// recording are refused before the VM runs, or fail it before its vCPU runs, with one
/// line; the sound recording still restores afterwards.
#[test]
fn damaged_sabre_recordings_never_serve_wrong_pages() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let snap_path = snapshot(dir.path(), "pyaes");
    let snap = snap_path.to_str().expect("UTF-8 path");
    let want = fresh_checksums("pyaes");
    fails(
        &["invoke", snap, "--strategy", "sabre"],
        "run `snapbpf record <DIR> --strategy",
    );
    let keep = dir.path().join("kept");
    std::fs::create_dir_all(&keep).expect("mkdir");
    for placement in ["single", "scattered"] {
        json(&[
            "record",
            snap,
            "--strategy",
            &format!("sabre:placement={placement}"),
        ]);
        for f in ["sabre.parts", "sabre.stream"] {
            std::fs::copy(snap_path.join(f), keep.join(f)).expect("keep");
        }
        let restore = |f: &str| std::fs::copy(keep.join(f), snap_path.join(f)).expect("restore");
        let stream = snap_path.join("sabre.stream");
        let len = std::fs::metadata(&stream).expect("stat").len();

        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&stream)
            .expect("open");
        f.set_len(len - 1000).expect("truncate");
        fails(
            &["invoke", snap, "--strategy", "sabre", "--cold"],
            "truncated",
        );
        restore("sabre.stream");

        // Corrupt bytes early, in the middle and at the end of the stream.
        for at in [len / 7, len / 2, len - 20] {
            flip_byte(&stream, at);
            let out = run(&["invoke", snap, "--strategy", "sabre", "--cold"]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{placement} byte {at}: {stderr}"
            );
            assert!(
                stderr.contains("Sabre's compressed working set")
                    || stderr.contains("does not decompress")
                    || stderr.contains("decompressed to"),
                "{placement} byte {at}: {stderr}"
            );
            assert!(!stderr.contains("panicked"), "{stderr}");
            restore("sabre.stream");
        }
        // `verify` finds the same damage without starting a VM.
        flip_byte(&stream, len / 2);
        let out = run(&["verify", snap]);
        assert_ne!(out.status.code(), Some(0), "verify sees a corrupt stream");
        restore("sabre.stream");

        flip_byte(&snap_path.join("sabre.parts"), 150);
        fails(&["invoke", snap, "--strategy", "sabre"], "CRC mismatch");
        restore("sabre.parts");
        std::fs::remove_file(snap_path.join("sabre.parts")).expect("rm");
        fails(&["invoke", snap, "--strategy", "sabre"], "does not exist");
        restore("sabre.parts");

        let report = invoke(snap, "sabre", 0, 1);
        assert_eq!(
            checksums(&report),
            vec![want[0].clone()],
            "{placement} sound again"
        );
    }
    // Stale: the recording put beside another snapshot's memory.
    let other = snapshot(dir.path(), "gzip");
    for f in ["sabre.parts", "sabre.stream"] {
        std::fs::copy(keep.join(f), other.join(f)).expect("put beside");
    }
    fails(
        &[
            "invoke",
            other.to_str().expect("UTF-8"),
            "--strategy",
            "sabre",
        ],
        "recorded for another version of the snapshot's memory file",
    );
}

/// `--device sata` runs the VMs in a blkio cgroup throttling the snapshot's disk: results
/// stay correct, and the cgroup is gone afterwards. (How much slower it reads is measured
/// by `snapbpf bench --device sata`, not tested.)
#[test]
fn a_device_profile_throttles_and_cleans_up() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let snap_path = snapshot(dir.path(), "pyaes");
    let snap = snap_path.to_str().expect("UTF-8 path");
    let want = fresh_checksums("pyaes");
    json(&["record", snap, "--strategy", "sabre"]);
    for strategy in ["linux-nora", "sabre"] {
        let report = json(&[
            "invoke",
            snap,
            "--strategy",
            strategy,
            "--cold",
            "--device",
            "sata",
            "--concurrency",
            "2",
        ]);
        assert_eq!(checksums(&report), vec![want[0].clone(); 2], "{strategy}");
    }
    let left: Vec<_> = [
        "/sys/fs/cgroup/blkio",
        "/sys/fs/cgroup",
        "/sys/fs/cgroup/unified",
    ]
    .iter()
    .filter_map(|root| std::fs::read_dir(root).ok())
    .flatten()
    .filter_map(|e| e.ok())
    .filter(|e| e.file_name().to_string_lossy().starts_with("snapbpf-sata-"))
    .map(|e| e.path())
    .collect();
    assert!(left.is_empty(), "cgroups left behind: {left:?}");
    let bad = run(&["invoke", snap, "--device", "floppy"]);
    assert_eq!(bad.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown device profile"));
}
