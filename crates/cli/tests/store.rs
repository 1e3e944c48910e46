//! The in-memory snapshot store (`snapbpf store`) and SnapFaaS over it, on real KVM: LRU
//! eviction past the capacity, requests from many clients at once, bad requests, stale
//! copies refused, a clean shutdown on SIGTERM, and restores by copy to the fresh boot's
//! checksum.

mod common;

use common::*;

fn held(store: &Store) -> Vec<String> {
    let list = json(&["store", "list", "--socket", store.sock()]);
    list.as_array()
        .expect("a list")
        .iter()
        .map(|h| h["function"].as_str().expect("function").to_string())
        .collect()
}

#[test]
fn the_store_evicts_serves_many_and_shuts_down_cleanly() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let pyaes = snapshot(dir.path(), "pyaes");
    let gzip = snapshot(dir.path(), "gzip");
    // Room for one of them only (about 28 MiB of data pages each), evicted whole.
    let store = Store::start_with(dir.path(), &["--capacity", "40M", "--no-trim"]);
    let s = store.sock();
    ok(&[
        "store",
        "add",
        pyaes.to_str().expect("UTF-8"),
        "--socket",
        s,
    ]);
    assert_eq!(held(&store), ["pyaes"]);
    ok(&["store", "add", gzip.to_str().expect("UTF-8"), "--socket", s]);
    assert_eq!(held(&store), ["gzip"], "the least recently used went");
    let stats = json(&["store", "stats", "--socket", s]);
    assert_eq!(stats["evictions"], 1, "{stats}");
    // The store holds the data pages only: the zero pages are holes.
    assert_eq!(
        stats["bytes"].as_u64(),
        Some(data_bytes(&gzip.join("memory"))),
        "{stats}"
    );

    // 100 requests from 10 clients at once: none lost, every memfd the snapshot's memory.
    let memory = std::fs::read(gzip.join("memory")).expect("read");
    let identity_of = |dir: &std::path::Path| -> snapbpf_store::FileIdentity {
        serde_json::from_value(
            serde_json::from_slice::<serde_json::Value>(
                &std::fs::read(dir.join("snapshot.json")).expect("meta"),
            )
            .expect("JSON")["memory"]
                .clone(),
        )
        .expect("identity")
    };
    let identity = identity_of(&gzip);
    // Holes read as zeros: the whole memfd reads as the memory file.
    let whole = snapbpf_memstore::get(&store.socket, &gzip, &identity).expect("get");
    let mut copy = vec![0u8; memory.len()];
    std::os::unix::fs::FileExt::read_exact_at(&std::fs::File::from(whole.memfd), &mut copy, 0)
        .expect("read the memfd");
    assert!(copy == memory, "the memfd reads as the memory file");
    let served: usize = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..10)
            .map(|_| {
                scope.spawn(|| {
                    (0..10)
                        .filter(|_| {
                            let served = snapbpf_memstore::get(&store.socket, &gzip, &identity)
                                .expect("get");
                            let file = std::fs::File::from(served.memfd);
                            let mut page = vec![0u8; 4096];
                            let at = served.extents[served.extents.len() / 2].page * 4096;
                            std::os::unix::fs::FileExt::read_exact_at(&file, &mut page, at)
                                .expect("read the memfd");
                            page == memory[at as usize..at as usize + 4096]
                        })
                        .count()
                })
            })
            .collect();
        clients.into_iter().map(|c| c.join().expect("client")).sum()
    });
    assert_eq!(served, 100);
    let stats = json(&["store", "stats", "--socket", s]);
    assert_eq!(stats["hits"], 101, "{stats}");

    // Bad requests get a one-line error and leave the store serving.
    fails(
        &["store", "add", "/nonexistent", "--socket", s],
        "cannot find",
    );
    fails(
        &[
            "store",
            "add",
            dir.path().to_str().expect("UTF-8"),
            "--socket",
            s,
        ],
        "snapshot.json",
    );
    // A snapshot.json that is a FIFO is refused, and does not hang the store's loader.
    let fifo_dir = dir.path().join("fifo-snapshot");
    std::fs::create_dir_all(&fifo_dir).expect("mkdir");
    let fifo = std::ffi::CString::new(
        fifo_dir
            .join("snapshot.json")
            .to_str()
            .expect("UTF-8")
            .as_bytes(),
    )
    .expect("no NUL");
    // SAFETY: mkfifo with a NUL-terminated path we own.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0, "mkfifo");
    fails(
        &[
            "store",
            "add",
            fifo_dir.to_str().expect("UTF-8"),
            "--socket",
            s,
        ],
        "cannot read",
    );
    {
        use std::io::{Read, Write};
        let mut raw = std::os::unix::net::UnixStream::connect(&store.socket).expect("connect");
        raw.write_all(b"{\"op\":\"explode\"}\n").expect("send");
        let mut reply = String::new();
        raw.read_to_string(&mut reply).expect("reply");
        assert!(reply.contains("\"error\""), "{reply}");
    }
    fails(
        &["store", "stats", "--socket", "/nonexistent.sock"],
        "is `snapbpf store serve` running?",
    );
    ok(&[
        "store",
        "evict",
        gzip.to_str().expect("UTF-8"),
        "--socket",
        s,
    ]);
    assert!(held(&store).is_empty());

    // SIGTERM: the store stops, releases every memfd and removes its socket.
    store.stop();
}

/// SnapFaaS: restores copy the store's memory into each VM and give the fresh boot's
/// checksum, one VM and ten, before and after the store evicts and reloads the snapshot;
/// a store holding another version of the snapshot is refused.
#[test]
fn snapfaas_restores_from_the_store() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let pyaes = snapshot(dir.path(), "pyaes");
    let gzip = snapshot(dir.path(), "gzip");
    let p = pyaes.to_str().expect("UTF-8");
    let g = gzip.to_str().expect("UTF-8");
    let store = Store::start_with(dir.path(), &["--capacity", "40M", "--no-trim"]);
    let s = store.sock();
    fails(
        &["invoke", p, "--strategy", "snapfaas"],
        "pass --store SOCKET",
    );
    for (snap, function) in [(p, "pyaes"), (g, "gzip"), (p, "pyaes")] {
        let want = fresh_checksums(function);
        for (input, want) in want.iter().enumerate() {
            for vms in ["1", "10"] {
                let report = json(&[
                    "invoke",
                    snap,
                    "--strategy",
                    "snapfaas",
                    "--store",
                    s,
                    "--cold",
                    "--input",
                    &input.to_string(),
                    "--concurrency",
                    vms,
                ]);
                let n: usize = vms.parse().expect("number");
                assert_eq!(
                    checksums(&report),
                    vec![want.clone(); n],
                    "{function} x{vms}"
                );
            }
        }
    }
    let stats = json(&["store", "stats", "--socket", s]);
    assert_eq!(
        stats["evictions"], 2,
        "pyaes, gzip, pyaes in 40 MiB: {stats}"
    );
    // The snapshot directory now holds another snapshot. The store holds snapshots by
    // their memory's identity, so the old copy can never be served for it: the new
    // version is a miss, loaded and served (to the fresh boot's checksum, which `ok`
    // and the invoke's own check confirm).
    ok(&["snapshot", "gzip", "--out", p, "--force"]);
    let misses = json(&["store", "stats", "--socket", s])["misses"]
        .as_u64()
        .expect("misses");
    ok(&["invoke", p, "--strategy", "snapfaas", "--store", s]);
    let after = json(&["store", "stats", "--socket", s])["misses"]
        .as_u64()
        .expect("misses");
    assert_eq!(
        after,
        misses + 1,
        "the re-taken snapshot is loaded, not the stale copy"
    );
}

/// SnapBPF over the store: every VM maps the store's memfd privately, so ten VMs share one
/// copy (SnapFaaS's ten VMs hold ten), and restores give the fresh boot's checksum.
#[test]
fn snapbpf_over_the_store_shares_one_copy() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let pyaes = snapshot(dir.path(), "pyaes");
    let p = pyaes.to_str().expect("UTF-8");
    ok(&["record", p, "--strategy", "snapbpf"]);
    let store = Store::start(dir.path(), "1G");
    let s = store.sock();
    let want = fresh_checksums("pyaes");
    let ten = |strategy: &str| {
        let report = json(&[
            "invoke",
            p,
            "--strategy",
            strategy,
            "--store",
            s,
            "--cold",
            "--input",
            "1",
            "--concurrency",
            "10",
        ]);
        assert_eq!(checksums(&report), vec![want[1].clone(); 10], "{strategy}");
        assert_eq!(
            report["memory"]["store_kib"].as_u64(),
            Some(data_bytes(&pyaes.join("memory")) >> 10),
            "{report}"
        );
        report["memory"]["total_kib"].as_u64().expect("total")
    };
    let shared = ten("snapbpf");
    let copied = ten("snapfaas");
    assert!(
        shared * 3 < copied,
        "mapping shares the store's pages ({shared} KiB) where copying does not ({copied} KiB)"
    );
    let one = json(&["invoke", p, "--strategy", "snapbpf", "--store", s, "--cold"]);
    assert_eq!(checksums(&one), vec![want[0].clone()]);
}

/// 100 requests from 10 VMM processes at a time (ten invokes of ten VMs, each VM a
/// process asking the store for its memfd): none lost, and the store's own memory stays
/// small (the snapshots live in memfds, not in its heap).
#[test]
fn the_store_serves_ten_vmm_processes_at_once() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let pyaes = snapshot(dir.path(), "pyaes");
    let p = pyaes.to_str().expect("UTF-8");
    let store = Store::start(dir.path(), "1G");
    let s = store.sock();
    let want = fresh_checksums("pyaes");
    for _ in 0..10 {
        let report = json(&[
            "invoke",
            p,
            "--strategy",
            "snapfaas",
            "--store",
            s,
            "--concurrency",
            "10",
        ]);
        assert_eq!(checksums(&report), vec![want[0].clone(); 10]);
    }
    let stats = json(&["store", "stats", "--socket", s]);
    assert_eq!(
        stats["hits"].as_u64().unwrap_or(0) + stats["misses"].as_u64().unwrap_or(0),
        100,
        "{stats}"
    );
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", store.child.id())).expect("status");
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    assert!(rss_kib < 48 * 1024, "the store's own memory: {rss_kib} KiB");
    store.stop();
}

/// The store strategies (`snapfaas` copying everything, `snapfaas:copy=ws` copying the
/// working set, `snapbpf --store` mapping the store) give the fresh boot's checksum for
/// every input, one VM and ten: from a store holding the snapshots whole, from one so
/// short of memory that it holds only their working sets (the rest paged from the memory
/// file), and after the store evicted a snapshot and loaded it again.
#[test]
fn store_strategies_give_the_reference_checksums_whole_and_trimmed() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let functions = ["pyaes", "heapcheck", "gzip"];
    let snaps: Vec<_> = functions
        .iter()
        .map(|f| {
            let snap = snapshot(dir.path(), f);
            ok(&[
                "record",
                snap.to_str().expect("UTF-8"),
                "--strategy",
                "snapbpf",
            ]);
            snap
        })
        .collect();
    let want: Vec<_> = functions.iter().map(|f| fresh_checksums(f)).collect();
    let check = |store: &Store, i: usize| {
        let snap = snaps[i].to_str().expect("UTF-8");
        for strategy in ["snapfaas", "snapfaas:copy=ws", "snapbpf"] {
            for (input, want) in want[i].iter().enumerate() {
                for vms in [1usize, 10] {
                    let report = json(&[
                        "invoke",
                        snap,
                        "--strategy",
                        strategy,
                        "--store",
                        store.sock(),
                        "--cold",
                        "--input",
                        &input.to_string(),
                        "--concurrency",
                        &vms.to_string(),
                    ]);
                    assert_eq!(
                        checksums(&report),
                        vec![want.clone(); vms],
                        "{} under {strategy}, input {input}, {vms} VMs",
                        functions[i]
                    );
                }
            }
        }
    };
    let resident = |store: &Store, i: usize| -> String {
        let list = json(&["store", "list", "--socket", store.sock()]);
        list.as_array()
            .expect("a list")
            .iter()
            .find(|h| h["function"] == functions[i])
            .map(|h| h["resident"].as_str().expect("resident").to_string())
            .unwrap_or_default()
    };

    let roomy = dir.path().join("roomy");
    std::fs::create_dir(&roomy).expect("mkdir");
    let store = Store::start(&roomy, "1G");
    for i in 0..functions.len() {
        check(&store, i);
        assert_eq!(resident(&store, i), "whole");
    }
    store.stop();

    // 20 MiB: neither pyaes nor gzip fits whole (27 and 29 MiB of data pages), their
    // working sets do; loading one evicts the other's working set.
    let short = dir.path().join("short");
    std::fs::create_dir(&short).expect("mkdir");
    let store = Store::start(&short, "20M");
    for i in [0, 2, 0] {
        check(&store, i);
        assert_eq!(resident(&store, i), "working-set", "{}", functions[i]);
    }
    let stats = json(&["store", "stats", "--socket", store.sock()]);
    assert!(stats["trims"].as_u64() >= Some(3), "{stats}");
    assert!(stats["evictions"].as_u64() >= Some(2), "{stats}");
    assert!(stats["bytes"].as_u64() <= Some(20 << 20), "{stats}");
    store.stop();
}

/// Huge-page-backed stores: shmem THP (refused while the host has it off, then holding
/// whole 2 MiB pages) serves both store strategies; hugetlbfs serves restore by copy and
/// refuses copy-on-write mappings with the reason.
#[test]
fn huge_page_backed_stores_serve_correct_pages() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let pyaes = snapshot(dir.path(), "pyaes");
    let p = pyaes.to_str().expect("UTF-8");
    ok(&["record", p, "--strategy", "snapbpf"]);
    let want = fresh_checksums("pyaes");
    let restores = |store: &Store, strategies: &[&str]| {
        for strategy in strategies {
            for vms in ["1", "10"] {
                let report = json(&[
                    "invoke",
                    p,
                    "--strategy",
                    strategy,
                    "--store",
                    store.sock(),
                    "--cold",
                    "--input",
                    "1",
                    "--concurrency",
                    vms,
                ]);
                let n: usize = vms.parse().expect("number");
                assert_eq!(checksums(&report), vec![want[1].clone(); n], "{strategy}");
            }
        }
    };
    let held_bytes = |store: &Store| -> u64 {
        json(&["store", "stats", "--socket", store.sock()])["bytes"]
            .as_u64()
            .expect("bytes")
    };

    {
        let Some(_thp) = shmem_thp_advise() else {
            return;
        };
        let store = Store::start_with(dir.path(), &["--huge-pages", "thp"]);
        ok(&["store", "add", p, "--socket", store.sock()]);
        let bytes = held_bytes(&store);
        assert!(
            bytes >= data_bytes(&pyaes.join("memory")) && bytes.is_multiple_of(2 << 20),
            "THP holds whole 2 MiB pages: {bytes}"
        );
        restores(&store, &["snapfaas", "snapfaas:copy=ws", "snapbpf"]);
        store.stop();
    }
    // With the setting back at its default (never here), the store refuses to start.
    if std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
        .is_ok_and(|s| s.contains("[never]"))
    {
        fails(
            &[
                "store",
                "serve",
                "--huge-pages",
                "thp",
                "--socket",
                dir.path().join("refused.sock").to_str().expect("UTF-8"),
            ],
            "shmem_enabled",
        );
    }

    let Some(_pool) = reserve_huge_pages(40) else {
        return;
    };
    let store = Store::start_with(dir.path(), &["--huge-pages", "hugetlb"]);
    restores(&store, &["snapfaas"]);
    assert!(held_bytes(&store).is_multiple_of(2 << 20));
    fails(
        &[
            "invoke",
            p,
            "--strategy",
            "snapbpf",
            "--store",
            store.sock(),
        ],
        "cannot map copy-on-write",
    );
    store.stop();
}
