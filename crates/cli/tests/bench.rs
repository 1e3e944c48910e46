//! `snapbpf bench` end to end on real KVM: the host calibration every run stamps (fault
//! costs measured with our VMM, the device around each function) and a sample checked
//! against the reference.

mod common;

use common::*;

#[test]
fn a_run_stamps_its_host_calibration() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let out = dir.path().join("bench");
    let out_s = out.to_str().expect("UTF-8");
    ok(&[
        "bench",
        "--functions",
        "pyaes",
        "--strategies",
        "snapbpf:4k,snapbpf",
        "--breakdown",
        "none",
        "--concurrency",
        "1",
        "--repeat",
        "1",
        "--warmup",
        "0",
        "--out",
        out_s,
    ]);
    let results: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join("results.json")).expect("results.json written"),
    )
    .expect("results are JSON");
    let cal = &results["calibration"];
    let cost = |kind: &str| {
        let c = &cal[kind];
        let us = c["us"].as_f64().unwrap_or_else(|| panic!("{kind}: {cal}"));
        assert_eq!(
            c["exec_ms"].as_array().map(Vec::len),
            Some(3),
            "{kind}: {c}"
        );
        (us, c["faults"].as_u64().expect("faults"))
    };
    let (read_4k, pages) = cost("read_fault_4k");
    let (anon_4k, _) = cost("anon_fault_4k");
    assert_eq!(pages, 16384);
    // A fault costs something, and less than the 64 MiB probe's whole run would allow.
    for us in [read_4k, anon_4k] {
        assert!(us > 0.05 && us < 1000.0, "{cal}");
    }
    if snapbpf_vmm::huge_pages_available() {
        let (huge, regions) = cost("fault_2m");
        assert_eq!(regions, 32);
        // One 2 MiB fault costs more than one 4 KiB fault and less than 512 of them.
        assert!(huge > read_4k && huge < read_4k * 512.0, "{cal}");
    }
    let device = cal["device"].as_array().expect("device checks");
    assert_eq!(device.len(), 1, "{cal}");
    assert_eq!(device[0]["function"], "pyaes");
    assert!(
        device[0]["before"]["seq_mb_s"].as_f64() > Some(0.0),
        "{cal}"
    );
    assert!(device[0]["drift"].as_f64().is_some(), "{cal}");
    let summary = std::fs::read_to_string(out.join("summary.md")).expect("summary.md");
    assert!(summary.contains("## Host calibration"), "{summary}");
    assert!(summary.contains("| pyaes |"), "{summary}");
    // SnapBPF's own costs: the capture's CPU, and the first prefetch request.
    let record = results["records"]
        .as_array()
        .expect("records")
        .iter()
        .find(|r| r["strategy"] == "snapbpf")
        .expect("snapbpf recorded");
    assert!(record["capture_cpu_ms"].as_f64() > Some(0.0), "{record}");
    assert!(summary.contains("start-up cost"), "{summary}");
    // Both SnapBPF rows ran, and every sample was correct.
    assert_eq!(results["wrong"], serde_json::json!([]));
    for label in ["snapbpf --4k", "snapbpf"] {
        assert!(
            results["samples"]
                .as_array()
                .expect("samples")
                .iter()
                .any(|s| s["strategy"] == label),
            "no sample of {label}"
        );
    }
}
