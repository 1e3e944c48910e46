//! End-to-end tests of eBPF capture and prefetch. They need root (or CAP_BPF +
//! CAP_PERFMON) and a kernel with the `filemap` tracepoints. Without them they print
//! `SKIPPED: ...` and pass, except when `CI=true`, where they fail.
//!
//! Files live under /var/tmp (a disk-backed filesystem), never tmpfs, except where
//! tmpfs is the point.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use snapbpf_wss::capture::{
    CaptureOptions, CaptureStartError, CaptureStopError, PageCacheCapture, TraceSource,
};
use snapbpf_wss::prefetch::{missing_ranges, prefetch, resident_pages};
use snapbpf_wss::workingset::WorkingSet;

mod common;
use common::*;

fn wait_resident(f: &File, ws: &WorkingSet) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let missing = missing_ranges(f, &ws.ranges).unwrap();
        if missing.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            // Readahead is best effort (docs/ebpf-capture.md): re-issue what is missing.
            eprintln!("re-prefetching {} ranges the kernel dropped", missing.len());
            prefetch(f, &missing).unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            while !missing_ranges(f, &ws.ranges).unwrap().is_empty() {
                assert!(
                    Instant::now() < deadline,
                    "prefetched pages never became resident"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn capture_then_prefetch_exact_working_set() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let path = make_file(dir.path(), "memory", PAGES);
    let touched = pattern(2000, PAGES, 7);
    let _f = cold(&path);
    let Some(cap) = start_or_skip(&path, &CaptureOptions::default(), "capture_then_prefetch")
    else {
        return;
    };
    touch(&path, "random", &touched);
    let captured = cap.stop().expect("capture");
    let acc = accuracy(&captured, &touched);
    eprintln!(
        "add_to_page_cache + MADV_RANDOM: {} touched, {} captured, recall {:.4}, extras {:.4}, {} events, order histogram {:?}",
        touched.len(),
        acc.captured,
        acc.recall,
        acc.extras,
        captured.total_events,
        &captured.order_histogram[..4]
    );
    assert!(acc.recall >= 0.99, "recall {}", acc.recall);
    assert!(acc.extras <= 0.05, "extras {}", acc.extras);
    assert_eq!(captured.lost_events, 0);

    // First-access order follows the touch order.
    let times: Vec<u64> = touched
        .iter()
        .filter_map(|p| captured.pages.get(p).copied())
        .collect();
    let ordered = times.windows(2).filter(|w| w[0] <= w[1]).count();
    assert!(
        ordered as f64 >= 0.99 * (times.len() - 1) as f64,
        "{ordered} of {} in order",
        times.len()
    );

    // Working-set file round trip bound to the file's identity.
    let id = snapbpf_store::verify::identify(&path).unwrap();
    let ws = WorkingSet::from_capture(id, &captured);
    let ws_path = dir.path().join("memory.ws");
    ws.write_atomic(&ws_path).unwrap();
    let ws = WorkingSet::read_for(&ws_path, &id).unwrap();
    assert_eq!(ws.total_pages() as usize, acc.captured);
    // Ranges are sorted by first access, and the first range holds the first touch.
    assert!(ws
        .ranges
        .windows(2)
        .all(|w| w[0].first_access_ns <= w[1].first_access_ns));
    let first = ws.ranges[0];
    assert!((first.start..first.end()).contains(&touched[0]));

    // Prefetch into a cold cache: exactly the working set becomes resident.
    let f = cold(&path);
    let stats = prefetch(&f, &ws.ranges).unwrap();
    assert_eq!(stats.bytes, ws.total_bytes());
    wait_resident(&f, &ws);
    let res = resident_pages(&f).unwrap();
    let want: BTreeSet<u64> = ws.pages().map(|(p, _)| p).collect();
    let resident: BTreeSet<u64> = res
        .iter()
        .enumerate()
        .filter(|(_, &r)| r)
        .map(|(i, _)| i as u64)
        .collect();
    assert_eq!(resident, want, "resident pages differ from the working set");
    eprintln!(
        "prefetch: {} bytes, {} ranges, {} requests, {:?}",
        stats.bytes, stats.ranges, stats.requests, stats.elapsed
    );
}

/// The capture docs/ebpf-capture.md relies on, `filemap/mm_filemap_add_to_page_cache`,
/// sees every page a process brings in (recall ≥ 0.99), and with `MADV_RANDOM` nothing
/// else (extras ≤ 5 %). `cargo run --example tracepoint_accuracy` measures every source.
#[test]
fn add_to_page_cache_sees_the_touched_pages() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let path = make_file(dir.path(), "memory", PAGES);
    let touched = pattern(3000, PAGES, 11);
    for advice in ["random", "normal"] {
        let _f = cold(&path);
        let opts = CaptureOptions {
            sources: vec![TraceSource::AddToPageCache],
            ..CaptureOptions::default()
        };
        let Some(cap) = start_or_skip(&path, &opts, "add_to_page_cache_sees_the_touched_pages")
        else {
            return;
        };
        touch(&path, advice, &touched);
        let acc = accuracy(&cap.stop().expect("capture"), &touched);
        assert!(acc.recall >= 0.99, "{advice}: recall {}", acc.recall);
        if advice == "random" {
            assert!(acc.extras <= 0.05, "{advice}: extras {}", acc.extras);
        }
    }
}

/// tmpfs (shmem) pages never pass through the filemap tracepoints (measured: 0
/// add_to_page_cache and 0 fault events; map_pages only reports fault-around windows),
/// so a capture there is refused instead of silently returning nothing.
#[test]
fn tmpfs_is_refused() {
    let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
        skipped("tmpfs_is_refused: no /dev/shm");
        return;
    };
    let path = make_file(dir.path(), "memory", 16);
    match PageCacheCapture::start(&path) {
        Err(CaptureStartError::NoPageCache { fs: "tmpfs", .. }) => {}
        r => panic!("expected NoPageCache for tmpfs, got {r:?}"),
    }
}

/// A ring buffer too small for a burst must surface as EventsLost, never silently.
#[test]
fn lost_events_are_reported() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let path = make_file(dir.path(), "memory", 4096);
    let f = cold(&path);
    // Cache every other page, so one readahead(2) of the whole file inserts 2048
    // order-0 folios in a single burst.
    for p in (0..4096u64).step_by(2) {
        // SAFETY: readahead only reads the fd and scalars.
        unsafe { libc::readahead(f.as_raw_fd(), (p * 4096) as libc::off64_t, 4096) };
    }
    std::thread::sleep(Duration::from_millis(200));
    // A 4 KiB ring (128 events) that never wakes the drain thread, which drains only
    // every second: the burst below cannot be drained while it happens.
    let opts = CaptureOptions {
        ring_buffer_bytes: 4096,
        wakeup_bytes: Some(u64::MAX),
        poll_interval: Duration::from_secs(1),
        ..CaptureOptions::default()
    };
    let Some(cap) = start_or_skip(&path, &opts, "lost_events_are_reported") else {
        return;
    };
    for chunk in 0..2u64 {
        // SAFETY: readahead only reads the fd and scalars.
        unsafe {
            libc::readahead(
                f.as_raw_fd(),
                (chunk * 2048 * 4096) as libc::off64_t,
                8 << 20,
            )
        };
    }
    match cap.stop() {
        Err(CaptureStopError::EventsLost { partial }) => {
            eprintln!(
                "lost {} of {} events, {} pages captured",
                partial.lost_events,
                partial.matched_events,
                partial.pages.len()
            );
            assert!(partial.lost_events > 0);
            assert_eq!(
                partial.matched_events,
                partial.lost_events + partial.total_events
            );
        }
        Ok(c) => panic!(
            "expected EventsLost with a 4 KiB ring buffer, got a complete capture of {} events",
            c.total_events
        ),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn start_errors_are_specific() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    match PageCacheCapture::start(&dir.path().join("missing")) {
        Err(CaptureStartError::Stat { .. }) => {}
        r => panic!("expected Stat, got {r:?}"),
    }
    match PageCacheCapture::start(dir.path()) {
        Err(CaptureStartError::NotRegularFile { .. }) => {}
        r => panic!("expected NotRegularFile, got {r:?}"),
    }
    match PageCacheCapture::start(Path::new("/proc/self/status")) {
        Err(CaptureStartError::NoPageCache { fs: "procfs", .. }) => {}
        r => panic!("expected NoPageCache, got {r:?}"),
    }
    let path = make_file(dir.path(), "f", 1);
    match PageCacheCapture::start_with(
        &path,
        &CaptureOptions {
            sources: vec![],
            ..CaptureOptions::default()
        },
    ) {
        Err(CaptureStartError::NoSources) => {}
        r => panic!("expected NoSources, got {r:?}"),
    }
}
