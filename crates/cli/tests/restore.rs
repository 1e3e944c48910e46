//! Snapshot and restore on real KVM: correctness against fresh boots and the host
//! reference, cold versus warm behaviour, and page-cache sharing between concurrent VMs.

mod common;

use common::*;

/// Every strategy and breakdown variant, as `--strategy` arguments.
const STRATEGIES: &[&str] = &[
    "linux-nora",
    "linux-ra",
    // The default: huge page-cache folios where the kernel gives them (`--thp` takes the
    // same path, failing instead of falling back).
    "snapbpf",
    "snapbpf --4k",
    "snapbpf --no-prefetch",
    "snapbpf --no-pv",
    "linux-ra --thp",
];

/// Every input of `function`: the checksum of a restored VM, cold and warm, under every
/// strategy (snapbpf recorded with input 0 only, so input 1 restores from another input's
/// working set), equals a freshly booted VM's and the host reference run's. One test per
/// function (below), so the test threads restore two functions at once.
fn restore_matches_fresh_boot(function: &str) {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let index = snapbpf_functions::index_of(function).expect("a function of the suite");
    let info = &snapbpf_functions::FUNCTIONS[index as usize];
    let snap = snapshot(dir.path(), info.name);
    let snap = snap.to_str().expect("UTF-8 path");
    ok(&["record", snap, "--strategy", "snapbpf", "--input", "0"]);
    let mut reference = snapbpf_functions::Call::parse(info.name)
        .expect("a function of the suite")
        .init();
    for input in 0..info.inputs {
        let input_s = input.to_string();
        let host = format!("{:016x}", reference.invoke(input));
        let fresh = json(&["boot", info.name, "--input", &input_s]);
        assert_eq!(
            fresh["checksum"],
            host.as_str(),
            "{} input {input}: fresh boot vs host",
            info.name
        );
        for strategy in STRATEGIES {
            // Warm, the breakdown variants take the same path as `snapbpf --4k` minus
            // what they switch off: cold is where they differ (and CI time is bounded).
            let warm_too = !strategy.contains("--no-");
            for cold in [true, false].into_iter().filter(|&c| c || warm_too) {
                let mut args = vec!["invoke", snap, "--input", &input_s, "--strategy"];
                args.extend(strategy.split(' '));
                if cold {
                    args.push("--cold");
                }
                let report = json(&args);
                assert_eq!(
                    checksums(&report),
                    vec![host.clone()],
                    "{} input {input} {strategy} cold={cold}",
                    info.name
                );
            }
        }
    }
}

macro_rules! restore_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                restore_matches_fresh_boot(stringify!($name));
            }
        )*
        /// Every function of the suite has its restore test.
        #[test]
        fn every_function_has_a_restore_test() {
            let covered = [$(stringify!($name)),*];
            for f in snapbpf_functions::FUNCTIONS {
                assert!(covered.contains(&f.name), "{} has no restore test", f.name);
            }
        }
    };
}

restore_tests!(
    pyaes,
    gzip,
    linpack,
    image,
    rnn,
    bert,
    graph_bfs,
    html_serving,
    heapcheck,
    faultprobe,
    footprint,
);

/// A cold restore reads the snapshot from disk (major faults); a warm one does not.
#[test]
fn cold_restore_reads_the_disk_and_warm_does_not() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let snap = snapshot(dir.path(), "pyaes");
    let snap = snap.to_str().expect("UTF-8 path");
    let cold = json(&["invoke", snap, "--strategy", "linux-nora", "--cold"]);
    let warm = json(&["invoke", snap, "--strategy", "linux-nora"]);
    assert_eq!(checksums(&cold), checksums(&warm));
    let (c, w) = (&cold["runs"][0], &warm["runs"][0]);
    assert!(
        c["major_faults"].as_u64().expect("major_faults") > 100,
        "cold run: {c}"
    );
    // Warm: the memory file is resident, so (almost) no fault waits for the disk. The
    // kernel also counts a retried fault as major (e.g. one that dropped mmap_lock to
    // start async readahead), so a handful may show up without any I/O.
    let (cold_faults, warm_faults) = (
        c["major_faults"].as_u64().expect("major_faults"),
        w["major_faults"].as_u64().expect("major_faults"),
    );
    assert!(
        warm_faults * 20 < cold_faults,
        "warm run: {w}, cold run: {c}"
    );
    // Latency is a benchmark matter (tests run in parallel and share two cores): cold
    // versus warm E2E is measured by `snapbpf bench` and recorded in docs/results/.
    assert_eq!(cold["cold"], true);
    assert_eq!(warm["cold"], false);
    // linux-ra really reads around faults: far fewer major faults than linux-nora.
    let ra = json(&["invoke", snap, "--strategy", "linux-ra", "--cold"]);
    assert_eq!(ra["runs"][0]["readahead_kib"].as_u64(), Some(128), "{ra}");
    assert!(
        ra["runs"][0]["major_faults"].as_u64() < c["major_faults"].as_u64().map(|f| f / 2),
        "linux-ra {ra} vs linux-nora {cold}"
    );
}

/// Ten VMs of one snapshot share its page cache: the run's memory counts it once.
#[test]
fn concurrent_vms_share_the_page_cache() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let snap = snapshot(dir.path(), "pyaes");
    let snap = snap.to_str().expect("UTF-8 path");
    let one = json(&["invoke", snap, "--strategy", "linux-nora", "--cold"]);
    let ten = json(&[
        "invoke",
        snap,
        "--strategy",
        "linux-nora",
        "--cold",
        "--concurrency",
        "10",
    ]);
    assert_eq!(ten["concurrency"], 10);
    let sums = checksums(&ten);
    assert_eq!(sums.len(), 10);
    assert!(sums.iter().all(|s| *s == checksums(&one)[0]), "{sums:?}");
    let m = &ten["memory"];
    let (total, cache, anon) = (
        m["total_kib"].as_u64().expect("total"),
        m["page_cache_kib"].as_u64().expect("cache"),
        m["anon_kib"].as_u64().expect("anon"),
    );
    assert_eq!(total, cache + anon);
    let anon_sum: u64 = ten["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| r["rss_anon_kib"].as_u64().expect("rss_anon_kib"))
        .sum();
    assert_eq!(anon, anon_sum);
    // The same pages are read by every VM but cached once: ten VMs' page cache is about
    // one VM's, far from ten times it.
    let single_cache = one["memory"]["page_cache_kib"].as_u64().expect("cache");
    assert!(single_cache > 0);
    assert!(
        cache < single_cache * 2,
        "10 VMs cached {cache} KiB, one VM {single_cache} KiB: pages were not shared"
    );
}
