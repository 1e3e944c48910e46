//! The REAP and FaaSnap baselines on real KVM: correct results against fresh boots for
//! every input, cold and warm, one and several VMs, with a recording made from another
//! input; refusal of missing, damaged and stale artifacts before any VM starts; and REAP
//! served by the external page-fault handler over Firecracker's UFFD protocol.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const BASELINES: [&str; 2] = ["reap", "faasnap"];

fn record(snap: &str, strategy: &str, input: u32) -> serde_json::Value {
    json(&[
        "record",
        snap,
        "--strategy",
        strategy,
        "--input",
        &input.to_string(),
    ])
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).expect("stat").len()
}

/// For each function: record with input 0, then every input, cold and warm, one VM and
/// three, gives the fresh boot's checksum under both baselines.
#[test]
fn baselines_match_fresh_boot() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    for function in ["pyaes", "image", "gzip"] {
        let snap_path = snapshot(dir.path(), function);
        let snap = snap_path.to_str().expect("UTF-8 path");
        let expected = fresh_checksums(function);
        for strategy in BASELINES {
            let rec = record(snap, strategy, 0);
            assert!(rec["pages"].as_u64() > Some(100), "{strategy}: {rec}");
            let ws = snap_path.join(format!("{strategy}.ws"));
            for (input, want) in expected.iter().enumerate() {
                let input_s = input.to_string();
                for cold in [true, false] {
                    for conc in ["1", "3"] {
                        let mut args = vec![
                            "invoke",
                            snap,
                            "--strategy",
                            strategy,
                            "--input",
                            &input_s,
                            "--concurrency",
                            conc,
                        ];
                        if cold {
                            args.push("--cold");
                        }
                        let report = json(&args);
                        let n: usize = conc.parse().expect("number");
                        assert_eq!(
                            checksums(&report),
                            vec![want.clone(); n],
                            "{function} {strategy} input {input} cold={cold} concurrency {conc}"
                        );
                        let prefetched = report["prefetch"]["bytes"].as_u64().expect("bytes");
                        match strategy {
                            // Every VM installs its own copy of the whole working set.
                            "reap" => assert_eq!(
                                prefetched,
                                n as u64 * file_len(&ws),
                                "{function} reap: {report}"
                            ),
                            // The working set is loaded once per host, shared by every VM.
                            _ if cold => assert!(
                                prefetched > 0 && prefetched <= file_len(&ws),
                                "{function} faasnap cold: {report}"
                            ),
                            _ => {}
                        }
                    }
                }
            }
        }
    }
}

fn truncate(path: &Path, by: u64) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open");
    let len = f.metadata().expect("stat").len();
    f.set_len(len - by).expect("truncate");
}

fn flip_byte(path: &Path, at: usize) {
    let mut b = std::fs::read(path).expect("read");
    let at = at.min(b.len() - 1);
    b[at] ^= 0x5a;
    std::fs::write(path, b).expect("write");
}

/// Missing, truncated, corrupt and stale artifacts are refused with one clear line and
/// exit 1, before a VM starts.
#[test]
fn bad_artifacts_are_refused() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let snap_path = snapshot(dir.path(), "pyaes");
    let snap = snap_path.to_str().expect("UTF-8 path");
    for strategy in BASELINES {
        fails(
            &["invoke", snap, "--strategy", strategy],
            "run `snapbpf record <DIR> --strategy",
        );
    }
    fails(
        &["record", snap, "--strategy", "linux-ra"],
        "has no record phase",
    );
    fails(
        &["record", snap, "--strategy", "reap", "--input", "9"],
        "takes inputs 0..",
    );
    fails(
        &[
            "invoke",
            snap,
            "--strategy",
            "linux-ra",
            "--uffd-handler",
            "/x",
        ],
        "--uffd-handler applies only to the reap strategy",
    );

    let keep = dir.path().join("kept");
    std::fs::create_dir_all(&keep).expect("mkdir");
    let artifacts = [
        ("reap", "reap.ws", "reap.trace"),
        ("faasnap", "faasnap.ws", "faasnap.meta"),
    ];
    for (strategy, ws, meta) in artifacts {
        record(snap, strategy, 0);
        for f in [ws, meta] {
            std::fs::copy(snap_path.join(f), keep.join(f)).expect("keep");
        }
        let restore = |f: &str| {
            std::fs::copy(keep.join(f), snap_path.join(f)).expect("restore");
        };
        // Truncated working set.
        truncate(&snap_path.join(ws), 4096);
        fails(
            &["invoke", snap, "--strategy", strategy, "--cold"],
            "truncated",
        );
        restore(ws);
        // Corrupt metadata / trace.
        flip_byte(&snap_path.join(meta), 200);
        fails(&["invoke", snap, "--strategy", strategy], "CRC mismatch");
        restore(meta);
        // Missing working set.
        std::fs::remove_file(snap_path.join(ws)).expect("rm");
        fails(&["invoke", snap, "--strategy", strategy], "does not exist");
        restore(ws);
        // Sound again.
        json(&["invoke", snap, "--strategy", strategy]);
        // Same size, one byte changed: the content is bound, not only the length.
        flip_byte(&snap_path.join(ws), 4096 * 3 + 1);
        fails(
            &["invoke", snap, "--strategy", strategy, "--cold"],
            if strategy == "reap" {
                "CRC32"
            } else {
                "has changed: its digest is"
            },
        );
        restore(ws);
        // Mixed recordings: the data of one record with the metadata of another (what an
        // interrupted or concurrent record would leave).
        record(snap, strategy, 1);
        restore(meta);
        let same = std::fs::read(snap_path.join(ws)).expect("read")
            == std::fs::read(keep.join(ws)).expect("read");
        if same {
            // Two recordings with the same data (REAP's fault order is deterministic):
            // the mix is a valid recording.
            json(&["invoke", snap, "--strategy", strategy, "--cold"]);
        } else {
            fails(
                &["invoke", snap, "--strategy", strategy, "--cold"],
                if strategy == "reap" {
                    "from another recording"
                } else {
                    "damaged or from another recording"
                },
            );
        }
        restore(ws);
        json(&["invoke", snap, "--strategy", strategy]);
    }
    // REAP checks the working set's contents when it reads them.
    flip_byte(&snap_path.join("reap.ws"), 12345);
    fails(&["invoke", snap, "--strategy", "reap"], "CRC32");
    std::fs::copy(keep.join("reap.ws"), snap_path.join("reap.ws")).expect("restore");

    // Identity is content: a new snapshot of the same function with byte-identical
    // memory (the guest is deterministic) keeps its recordings valid.
    ok(&["snapshot", "pyaes", "--out", snap, "--force"]);
    for (strategy, ws, meta) in artifacts {
        for f in [ws, meta] {
            std::fs::copy(keep.join(f), snap_path.join(f)).expect("put back");
        }
        json(&["invoke", snap, "--strategy", strategy, "--cold"]);
    }
    // Stale: recordings put beside another snapshot's memory.
    let other_path = snapshot(dir.path(), "image");
    let other = other_path.to_str().expect("UTF-8 path");
    for (strategy, ws, meta) in artifacts {
        for f in [ws, meta] {
            std::fs::copy(keep.join(f), other_path.join(f)).expect("put beside");
        }
        fails(
            &["invoke", other, "--strategy", strategy, "--cold"],
            "recorded for another version of the snapshot's memory file",
        );
    }
}

/// REAP with the external `snapbpf uffd-handler`: the VMM hands over the userfaultfd
/// through the socket, as Firecracker does, and the results are correct.
#[test]
fn reap_with_external_uffd_handler() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let snap_path = snapshot(dir.path(), "pyaes");
    let snap = snap_path.to_str().expect("UTF-8 path");
    let expected = fresh_checksums("pyaes");
    record(snap, "reap", 0);
    let socket = dir.path().join("uffd.sock");
    let sock = socket.to_str().expect("UTF-8 path");
    fails(
        &["invoke", snap, "--strategy", "reap", "--uffd-handler", sock],
        "connect",
    );
    let _handler = start_handler(&socket, &["--snapshot".as_ref(), snap.as_ref()]);
    for (input, conc) in [(0usize, "1"), (1, "3")] {
        let report = json(&[
            "invoke",
            snap,
            "--strategy",
            "reap",
            "--uffd-handler",
            sock,
            "--cold",
            "--input",
            &input.to_string(),
            "--concurrency",
            conc,
        ]);
        let n: usize = conc.parse().expect("number");
        assert_eq!(checksums(&report), vec![expected[input].clone(); n]);
        assert_eq!(
            report["prefetch"]["bytes"].as_u64(),
            Some(n as u64 * file_len(&snap_path.join("reap.ws"))),
            "{report}"
        );
    }
    // A handler given only a raw memory file (as for a Firecracker snapshot) serves every
    // fault on demand.
    let raw_socket = dir.path().join("raw.sock");
    let raw = raw_socket.to_str().expect("UTF-8 path");
    let memory = snap_path.join("memory");
    let _raw_handler = start_handler(&raw_socket, &["--memory-file".as_ref(), memory.as_ref()]);
    let report = json(&[
        "invoke",
        snap,
        "--strategy",
        "reap",
        "--uffd-handler",
        raw,
        "--cold",
        "--input",
        "1",
    ]);
    assert_eq!(checksums(&report), vec![expected[1].clone()]);
    assert_eq!(report["prefetch"]["bytes"].as_u64(), Some(0), "{report}");

    // A handler serving another memory file of the same size (one byte differs) is
    // refused before the vCPU runs: it says what it serves.
    let other_memory = dir.path().join("other-memory");
    let mut bytes = std::fs::read(&memory).expect("read");
    bytes[5 << 20] ^= 0xff;
    std::fs::write(&other_memory, bytes).expect("write");
    let other_socket = dir.path().join("other.sock");
    let other = other_socket.to_str().expect("UTF-8 path");
    let _other_handler = start_handler(
        &other_socket,
        &["--memory-file".as_ref(), other_memory.as_ref()],
    );
    fails(
        &[
            "invoke",
            snap,
            "--strategy",
            "reap",
            "--uffd-handler",
            other,
        ],
        "serves another memory file",
    );
}

/// A fake handler's side of the handshake, as Firecracker's handlers: accepts the VMM,
/// reads its region list (the descriptor that comes with it is dropped), writes nothing
/// back and serves nothing.
fn accept_silently(listener: &std::os::unix::net::UnixListener) -> std::os::unix::net::UnixStream {
    use std::io::Read;
    let (mut conn, _) = listener.accept().expect("accept");
    let mut buf = [0u8; 4096];
    let n = conn.read(&mut buf).expect("read the regions");
    assert!(
        String::from_utf8_lossy(&buf[..n]).contains("base_host_virt_addr"),
        "Firecracker-style region list expected"
    );
    conn
}

/// A handler that takes the memory, serves nothing and goes away: the VMM serves the rest of
/// the VM from the snapshot itself (so nothing hangs and no page is zero-filled) and the
/// run fails with a clear error: its pages did not come from the handler it was given.
#[test]
fn reap_fails_cleanly_when_the_handler_goes_away() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let snap_path = snapshot(dir.path(), "pyaes");
    let snap = snap_path.to_str().expect("UTF-8 path");
    record(snap, "reap", 0);
    let socket = dir.path().join("vanishing.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    let fake = std::thread::spawn(move || {
        let _conn = accept_silently(&listener);
        std::thread::sleep(Duration::from_millis(500));
    });
    fails(
        &[
            "invoke",
            snap,
            "--strategy",
            "reap",
            "--firecracker-handler",
            socket.to_str().expect("UTF-8 path"),
            "--timeout-secs",
            "60",
        ],
        "disconnected while the VM was running; its remaining pages were served from the snapshot's memory file, so the run is void",
    );
    fake.join().expect("fake handler");
}

/// A handler that takes the memory and stays connected but never serves a page: the restore
/// fails with a clear error within the serve timeout instead of hanging the VMM.
#[test]
fn reap_fails_cleanly_when_the_handler_never_serves() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    let snap_path = snapshot(dir.path(), "pyaes");
    let snap = snap_path.to_str().expect("UTF-8 path");
    record(snap, "reap", 0);
    let socket = dir.path().join("silent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    let (done_tx, done) = std::sync::mpsc::channel::<()>();
    let fake = std::thread::spawn(move || {
        let conn = accept_silently(&listener);
        // Stay connected, serve nothing, until the test is over.
        let _ = done.recv_timeout(Duration::from_secs(120));
        drop(conn);
    });
    let started = std::time::Instant::now();
    fails(
        &[
            "invoke",
            snap,
            "--strategy",
            "reap",
            "--firecracker-handler",
            socket.to_str().expect("UTF-8 path"),
            "--timeout-secs",
            "60",
        ],
        "did not serve its first page within",
    );
    assert!(
        started.elapsed() < Duration::from_secs(50),
        "took {:?}",
        started.elapsed()
    );
    let _ = done_tx.send(());
    fake.join().expect("fake handler");
}

/// A handler that speaks only Firecracker's handshake and never writes to the socket (as
/// Firecracker's example handlers) serves every function to the fresh boot's checksum, with
/// no record phase: the VMM neither waits for it nor needs REAP's artifacts.
#[test]
fn a_handler_that_never_writes_serves_every_function() {
    if !require_kvm() {
        return;
    }
    let dir = scratch();
    for info in snapbpf_functions::FUNCTIONS {
        let snap_path = snapshot(dir.path(), info.name);
        let snap = snap_path.to_str().expect("UTF-8 path");
        let want = json(&["boot", info.name, "--input", "0"])["checksum"]
            .as_str()
            .expect("checksum")
            .to_string();
        let socket = dir.path().join(format!("{}.sock", info.name));
        let memory = snap_path.join("memory");
        let _handler = start_handler(
            &socket,
            &[
                "--silent".as_ref(),
                "--memory-file".as_ref(),
                memory.as_ref(),
            ],
        );
        let started = Instant::now();
        let report = json(&[
            "invoke",
            snap,
            "--strategy",
            "reap",
            "--firecracker-handler",
            socket.to_str().expect("UTF-8 path"),
            "--cold",
        ]);
        assert_eq!(checksums(&report), vec![want], "{}", info.name);
        assert_eq!(report["prefetch"]["bytes"].as_u64(), Some(0), "{report}");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{}: no wait on an acknowledgement that never comes",
            info.name
        );
    }
}
