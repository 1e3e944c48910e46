//! Guests larger than the 32-bit gap: RAM in two regions (below 3 GiB and from 4 GiB, as
//! Firecracker lays it out), under both VMMs. A `footprint` function whose state does not
//! fit below the gap puts data in the high region; restores under the strategies each VMM
//! runs must give the host reference's checksums.

mod common;

use std::path::Path;

use common::*;

/// 3600 MiB of state (more than the low region holds), 16 MiB read per invocation.
const CALL: &str = "footprint:3600:16";

/// Where the high region starts in a memory file at the latest: Firecracker ends its low
/// region at 3.25 GiB or lower, our VMM at 3 GiB.
const HIGH_REGION_BY: u64 = 3328 << 20;

/// Bytes of data (not holes) the memory file holds at or past `from`.
fn data_past(memory: &Path, from: u64) -> u64 {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(memory).expect("open the memory file");
    let len = file.metadata().expect("stat").len();
    let mut page = vec![0u8; 1 << 20];
    let (mut at, mut data) = (from, 0u64);
    while at < len {
        file.read_exact_at(&mut page, at).expect("read");
        data += page
            .chunks(4096)
            .filter(|p| p.iter().any(|&b| b != 0))
            .count() as u64
            * 4096;
        at += page.len() as u64;
    }
    data
}

/// The two tests run at once (each guest's init is bound by one vCPU's page faults, and
/// the host has two cores); each holds its host reference's gigabytes only until its
/// checksums are computed, before its VM is booted, so the two together stay well inside
/// the host's memory.
fn restores_match_the_host(vmm: &str, recorded: &[&str], strategies: &[&str]) {
    let hosts: Vec<String> = {
        let mut reference = snapbpf_functions::Call::parse(CALL)
            .expect("footprint takes this argument")
            .init();
        (0..2u32)
            .map(|input| format!("{:016x}", reference.invoke(input)))
            .collect()
    };
    let dir = scratch();
    let snap = dir.path().join(format!("large-{vmm}"));
    let snap_s = snap.to_str().expect("UTF-8 path");
    ok(&["snapshot", CALL, "--out", snap_s, "--vmm", vmm]);
    let memory = snap.join("memory");
    let len = std::fs::metadata(&memory).expect("memory file").len();
    assert!(
        len > 4 << 30,
        "{vmm}: guest memory of {len} bytes is not past 4 GiB"
    );
    let high = data_past(&memory, HIGH_REGION_BY);
    assert!(
        high >= 64 << 20,
        "{vmm}: only {high} bytes of data above the gap: the state did not reach high memory"
    );
    for strategy in recorded {
        ok(&["record", snap_s, "--strategy", strategy, "--input", "0"]);
    }
    for (input, host) in hosts.iter().enumerate() {
        let input_s = input.to_string();
        for strategy in strategies {
            let mut args = vec![
                "invoke",
                snap_s,
                "--input",
                &input_s,
                "--cold",
                "--strategy",
            ];
            args.extend(strategy.split(' '));
            let report = json(&args);
            assert_eq!(
                checksums(&report),
                vec![host.clone()],
                "{vmm} {strategy} input {input}"
            );
        }
    }
}

#[test]
fn a_guest_above_the_gap_restores_under_our_vmm() {
    if !require_kvm() {
        return;
    }
    restores_match_the_host(
        "builtin",
        &["snapbpf", "reap"],
        &["snapbpf", "linux-ra", "linux-nora", "reap"],
    );
}

#[test]
fn a_guest_above_the_gap_restores_under_firecracker() {
    if firecracker().is_none() {
        return;
    }
    restores_match_the_host("firecracker", &["snapbpf"], &["snapbpf", "linux-ra"]);
}
