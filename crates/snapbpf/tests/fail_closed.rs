//! A userfaultfd handler that cannot serve a page stops the VM with its error; the guest
//! never runs on the zero pages a closed userfaultfd would leave (real KVM, real
//! userfaultfd, a real short file as the failing source).

use std::time::{Duration, Instant};

use snapbpf::run::{self, PrefetchReport, RunError, RunOptions};
use snapbpf::uffd_backend::UffdMemory;
use snapbpf_uffd::UffdError;

fn kvm_usable() -> bool {
    let usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !usable {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("/dev/kvm is not usable and CI=true: KVM tests must run in CI");
        }
        eprintln!("\n!!!!!!!! SKIPPED: /dev/kvm is missing or not permitted !!!!!!!!\n");
    }
    usable
}

/// A fresh snapshot of pyaes in a scratch directory (kept alive by the returned guard).
fn pyaes_snapshot() -> (tempfile::TempDir, snapbpf::snapshot::Snapshot) {
    let dir = tempfile::Builder::new()
        .prefix("snapbpf-test-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let snapshot = snapbpf::snapshot::create(
        "pyaes",
        &dir.path().join("pyaes"),
        &snapbpf::snapshot::CreateOptions {
            timeout: Duration::from_secs(60),
            ..Default::default()
        },
    )
    .expect("snapshot");
    (dir, snapshot)
}

#[test]
fn a_serving_error_stops_the_vcpu_with_that_error() {
    if !kvm_usable() {
        return;
    }
    let (dir, snapshot) = pyaes_snapshot();
    // The source holds the first MiB only (page tables, mailbox): the guest's code above
    // it cannot be served. A closed userfaultfd would hand the guest zeros for it.
    let memory = std::fs::read(snapshot.memory_path()).expect("read memory");
    let short = dir.path().join("short");
    std::fs::write(&short, &memory[..1 << 20]).expect("write");
    let source = std::fs::File::open(&short).expect("open");

    let backend = UffdMemory::new(snapshot.meta.mem_bytes).expect("uffd memory");
    let restored = backend
        .serve_in_process(source, |_, _| Ok(PrefetchReport::default()))
        .expect("restore");
    let started = Instant::now();
    let outcome = run::run_restored(
        &snapshot,
        restored,
        &RunOptions {
            input: 0,
            timeout: Duration::from_secs(30),
        },
        started,
        run::major_faults(),
        run::process_cpu(),
    );
    let took = started.elapsed();
    match outcome {
        Err(RunError::Helper { name, source }) => {
            assert_eq!(name, "uffd-handler");
            let cause = source
                .downcast_ref::<UffdError>()
                .unwrap_or_else(|| panic!("the handler's own error, got {source}"));
            assert!(
                matches!(cause, UffdError::Source { offset, .. } if *offset >= 1 << 20),
                "{cause}"
            );
        }
        other => panic!("expected the handler's serving error, got {other:?}"),
    }
    assert!(
        took < Duration::from_secs(5),
        "the vCPU is stopped at once, not by the 30 s timeout: {took:?}"
    );
}

/// A worker process that never answers is killed at the protocol's deadline and the
/// invocation fails naming it; the launcher never waits forever.
#[test]
fn a_silent_worker_is_killed_at_the_deadline() {
    if !kvm_usable() {
        return;
    }
    let (_dir, snapshot) = pyaes_snapshot();
    let started = Instant::now();
    let outcome = snapbpf::launch::invoke(
        &snapbpf::launch::InvokeRequest {
            dir: snapshot.dir.clone(),
            spec: snapbpf::strategy::StrategySpec::named("linux-ra").expect("spec"),
            run: RunOptions {
                input: 0,
                timeout: Duration::from_secs(30),
            },
            cache: snapbpf::launch::CacheStart::Warm,
            device: snapbpf::storage_profile::StorageProfile::Native,
            concurrency: 1,
        },
        // Reads nothing, says nothing.
        &|| {
            let mut c = std::process::Command::new("sleep");
            c.arg("600");
            c
        },
    );
    let took = started.elapsed();
    match outcome {
        Err(snapbpf::launch::InvokeError::Worker {
            reason: snapbpf::launch::WorkerFailure::Silent { .. },
            ..
        }) => {}
        other => panic!("expected a silent worker, got {other:?}"),
    }
    assert!(
        took >= snapbpf::launch::READY_DEADLINE
            && took < snapbpf::launch::READY_DEADLINE + Duration::from_secs(10),
        "{took:?}"
    );
}
