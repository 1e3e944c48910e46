//! Every function of the suite boots under a real Firecracker, is snapshotted at ready,
//! and restores in a new Firecracker process (File backend; and the Uffd backend served by
//! snapbpf's own handler) to the checksums of the host reference. Each test also checks
//! that no process, socket or directory is left behind.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use snapbpf_firecracker::{guest, Binary, MemBackend, Vm};

/// Inputs invoked after a restore: 0, and 1 where the function has more than one input.
fn inputs_of(function: u32) -> Vec<u32> {
    let info = &snapbpf_functions::FUNCTIONS[function as usize];
    (0..info.inputs.clamp(1, 2)).collect()
}

/// Restores `snap` with `backend` in a new process, invokes every input, checks the
/// checksums and the invocation count; returns the load round trip and the first
/// invocation's time from `input` to `done`.
fn restore_and_check(
    bin: &Binary,
    snap: &Snapshot,
    backend: MemBackend<'_>,
) -> (Duration, Duration) {
    let name = snapbpf_functions::FUNCTIONS[snap.function as usize].name;
    let inputs = inputs_of(snap.function);
    let expected = reference(snap.function, &inputs);
    let mut vm = Vm::spawn(bin).expect("spawn Firecracker");
    let load = vm
        .load_snapshot(&snap.vmstate, backend)
        .unwrap_or_else(|e| panic!("load {name}: {e}"));
    let mut first = Duration::ZERO;
    for (i, (&input, &want)) in inputs.iter().zip(&expected).enumerate() {
        let started = Instant::now();
        let done = guest::invoke(vm.serial(), input, Instant::now() + GUEST_TIMEOUT)
            .unwrap_or_else(|e| panic!("{name} input {input}: {e}"));
        if i == 0 {
            first = started.elapsed();
        }
        assert_eq!(
            format!("{:016x}", done.checksum),
            format!("{want:016x}"),
            "{name} input {input}: checksum against the host reference"
        );
        assert_eq!(done.invocations, i as u64 + 1, "{name}: invocation count");
        assert!(done.cycles > 0, "{name}: cycles");
    }
    let (anon, file) = vm.rss_kib().expect("rss");
    eprintln!(
        "{name}: restored ({backend:?}) in {load:?}; input {} -> done in {first:?}; RssAnon {anon} KiB, RssFile {file} KiB",
        inputs[0]
    );
    gone_after_drop(vm);
    (load, first)
}

/// Boot, snapshot, restore with the File backend, check the checksums.
fn file_backend(name: &str) {
    let Some(bin) = firecracker() else { return };
    let function = snapbpf_functions::index_of(name).expect("function exists");
    let dir = scratch();
    let snap = snapshot(&bin, dir.path(), function);
    eprintln!(
        "{name}: boot to ready {:?}, pause + snapshot create {:?}",
        snap.boot, snap.create
    );
    restore_and_check(&bin, &snap, MemBackend::File(&snap.memory));
}

macro_rules! file_backend_tests {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            file_backend(stringify!($name));
        }
    )*};
}

file_backend_tests!(
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
    footprint
);

#[test]
fn the_suite_is_covered() {
    let covered = [
        "pyaes",
        "gzip",
        "linpack",
        "image",
        "rnn",
        "bert",
        "graph_bfs",
        "html_serving",
        "heapcheck",
        "faultprobe",
        "footprint",
    ];
    for f in snapbpf_functions::FUNCTIONS {
        assert!(
            covered.contains(&f.name),
            "{} has no Firecracker test",
            f.name
        );
    }
}

/// Serves `memory` on demand on `socket` for one VM, in a thread of this test.
fn uffd_handler(socket: &Path, memory: &Path) -> std::thread::JoinHandle<()> {
    let (socket, memory) = (socket.to_path_buf(), memory.to_path_buf());
    let size = std::fs::metadata(&memory).expect("memory file").len();
    let identity = snapbpf_store::FileIdentity {
        size,
        digest: [0; 32],
    };
    let on_demand: Arc<snapbpf_uffd::server::Prefetch> =
        Arc::new(|_, _, _| Ok(snapbpf_uffd::HandlerAck::default()));
    std::thread::spawn(move || {
        snapbpf_uffd::server::listen(
            &socket,
            snapbpf_uffd::server::ServedMemory {
                file: std::fs::File::open(&memory).expect("memory file"),
                path: memory.clone(),
                identity,
            },
            on_demand,
            Some(1),
            false,
            &snapbpf_os::access::AccessPolicy::default(),
        )
        .expect("the handler serves");
    })
}

#[test]
fn uffd_backend_served_by_snapbpfs_handler() {
    let Some(bin) = firecracker() else { return };
    let dir = scratch();
    for name in ["gzip", "graph_bfs"] {
        let function = snapbpf_functions::index_of(name).expect("function exists");
        let sub = dir.path().join(name);
        std::fs::create_dir(&sub).expect("mkdir");
        let snap = snapshot(&bin, &sub, function);
        let handler_dir = tempfile::tempdir().expect("tempdir");
        let socket = handler_dir.path().join("uffd.sock");
        let handler = uffd_handler(&socket, &snap.memory);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "the handler never listened");
            std::thread::sleep(Duration::from_millis(5));
        }
        let (load, _) = restore_and_check(&bin, &snap, MemBackend::Uffd(&socket));
        // Firecracker's exit closed the session: the handler ends and removes its socket.
        handler.join().expect("the handler thread");
        assert!(!socket.exists(), "the handler's socket is left behind");
        eprintln!("{name}: Uffd load round trip {load:?}");
        // The same snapshot still restores with the File backend.
        restore_and_check(&bin, &snap, MemBackend::File(&snap.memory));
    }
}
